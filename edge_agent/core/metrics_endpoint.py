"""The optional /metrics endpoint: started if configured; a failure is reported and the agent
goes on without it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.config import AgentConfig

if TYPE_CHECKING:
    from edge_agent.metrics import MetricsEndpoint

log = logging.getLogger("edge_agent.agent")


def start_metrics(cfg: AgentConfig, raise_event: Callable[..., Any]) -> MetricsEndpoint | None:
    m = cfg.metrics
    if not m.enabled:
        return None
    detail = {"bind": m.bind, "port": m.port}
    try:
        from edge_agent.metrics import MetricsEndpoint  # noqa: PLC0415 - the optional `metrics` extra
    except ImportError:
        raise_event(
            "metrics_error",
            "error",
            "metrics.enabled = true needs prometheus-client (pip install 'edge-agent[metrics]'): going on without /metrics",
            detail,
        )
        return None
    endpoint = MetricsEndpoint(m, device=cfg.device.id, version=__version__)
    try:
        endpoint.start()
    except OSError as err:
        raise_event("metrics_error", "error", f"{err}: going on without /metrics", detail)
        return None
    log.info("serving /metrics on %s:%d", *(endpoint.address or (m.bind, m.port)))
    return endpoint
