"""The device's status, computed in one place from the parts' states.

`online`: a model is loaded, a source is open (or a finite one has finished), and the guard has
not degraded the device after consecutive faults. Anything else is `degraded`. Pausing does not
change the state (SPEC fixes it): the status carries `paused` beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.pipeline import Pipeline
    from edge_agent.stats import Stats

log = logging.getLogger("edge_agent.agent")


def compute_state(*, model_loaded: bool, source_open: bool, faulty: bool) -> str:
    return "online" if model_loaded and source_open and not faulty else "degraded"


class Status:
    def __init__(self, publish: Callable[[str], None]) -> None:
        self.state = "degraded"  # until a model and a source are up
        self.since = time.time()
        self._publish = publish

    def update(self, state: str) -> bool:
        """Publish the state when it changed; returns whether it did."""
        if state == self.state:
            return False
        log.info("status: %s → %s", self.state, state)
        self.state = state
        self.since = time.time()
        self._publish(state)
        return True


def status_payload(
    state: str, since: float, pipeline: Pipeline | None, cfg: AgentConfig, *, interpreter: str, paused: bool
) -> dict[str, Any]:
    """The retained P/D/status payload (also the Last Will, with state "offline")."""
    p = pipeline
    model = (
        {"name": p.model.name, "sha256": p.model.file.sha256, "delegate": p.model.delegate}
        if p is not None
        else {"name": Path(cfg.model.path).name, "sha256": None, "delegate": None}
    )
    return {
        "state": state,
        "version": __version__,
        "model": model,
        "interpreter": interpreter,
        "since": round(since, 3),
        # SPEC fixes `state`; a paused agent is online but publishes nothing, which a consumer
        # must be able to tell from a stuck one
        "paused": paused,
    }


def status_text(state: str, pipeline: Pipeline | None, stats: Stats, connected: bool, outbox_depth: int) -> str:
    """systemd's STATUS= line."""
    p = pipeline
    model = f"{p.model.name} ({p.model.delegate})" if p is not None else "no model"
    avg_fps = stats.frames / max(time.monotonic() - stats.started, 1e-6)
    broker = "broker connected" if connected else "broker unreachable"
    return f"{state}; {model}; {avg_fps:.1f} fps average; {broker}; outbox {outbox_depth}"
