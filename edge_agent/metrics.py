"""The optional Prometheus `/metrics` endpoint: the stats topic's figures, in Prometheus' form.

The collector keeps no counters of its own: it turns the last snapshot the agent published on
`P/D/stats` into metric families at each scrape, so both always say the same (and the figures
are as fresh as `service.stats_interval_s`; `edge_agent_stats_timestamp_seconds` says when they
were taken). Units follow Prometheus' conventions: seconds and bytes, counters end in `_total`.

prometheus-client is the `metrics` extra: this module is imported only when the endpoint is on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from edge_agent.config import MetricsConfig

PREFIX = "edge_agent"
STATES = ("online", "degraded", "offline")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _by(name: str, doc: str, label: str, table: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    for key, n in sorted(table.items()):
        family.add_metric([key], n)
    return family


class StatsCollector:
    """A custom collector over the latest stats snapshot (swapped whole: no lock needed)."""

    def __init__(self, *, device: str, version: str) -> None:
        self._info = {"device": device, "version": version}
        self._snap: Mapping[str, Any] | None = None

    def update(self, snapshot: Mapping[str, Any]) -> None:
        self._snap = snapshot

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(PREFIX, "The agent: device id and version", value=self._info)
        s = self._snap
        if s is None:
            return  # nothing measured yet: no figures rather than made-up zeros
        yield from _throughput(s)
        yield from _outbox(s["outbox"])
        yield from _health(s)


def _throughput(s: Mapping[str, Any]) -> Iterator[Metric]:
    """Frames, results, latency, faults and the sensor values mended on the way."""
    yield _gauge("stats_timestamp_seconds", "Unix time at which these figures were taken", s["ts"])
    yield _gauge("uptime_seconds", "Seconds since the agent started", s["uptime_s"])
    yield _counter("frames", "Frames handed to the pipeline", s["frames"])
    yield _counter("results", "Results published", s["results"])
    yield _counter(
        "dropped_frames",
        "Frames dropped (a newer one arrived first, or inference was restarting)",
        s["dropped_frames"],
    )
    yield _gauge("fps", "Frames per second between the last two stats snapshots", s["fps"])
    latency = GaugeMetricFamily(
        f"{PREFIX}_stage_latency_seconds",
        "Per-stage latency percentile over the last frames",
        labels=["stage", "quantile"],
    )
    for stage, q in sorted(s["stages"].items()):
        latency.add_metric([stage, "0.5"], q["p50_ms"] / 1000.0)
        latency.add_metric([stage, "0.99"], q["p99_ms"] / 1000.0)
    yield latency
    yield _by("faults", "Events raised, by kind (before merging)", "kind", s["faults"])
    for what in ("imputed", "clipped"):
        if what in s:
            yield _by(what, f"Sensor values {what}, by feature", "feature", s[what])


def _outbox(outbox: Mapping[str, Any]) -> Iterator[Metric]:
    yield _gauge("outbox_messages", "Messages queued in the outbox, not yet acknowledged", outbox["depth"])
    if "bytes" in outbox:
        yield _gauge("outbox_bytes", "Size of the queued messages", outbox["bytes"])
    if "in_flight" in outbox:
        yield _gauge(
            "outbox_in_flight_messages",
            "Messages sent and awaiting the broker's acknowledgement",
            outbox["in_flight"],
        )
    if outbox.get("oldest_age_s") is not None:
        yield _gauge("outbox_oldest_age_seconds", "Age of the oldest queued message", outbox["oldest_age_s"])
    if "on_disk" in outbox:
        yield _gauge("outbox_on_disk", "1 while the outbox is on disk, 0 while kept in memory", int(outbox["on_disk"]))


def _health(s: Mapping[str, Any]) -> Iterator[Metric]:
    """The process, the board, the link and the status state."""
    yield _gauge("resident_memory_bytes", "Resident memory of the agent process", s["rss_mb"] * 1e6)
    if s.get("cpu_temp_c") is not None:
        yield _gauge("cpu_temperature_celsius", "SoC temperature", s["cpu_temp_c"])
    if "broker_connected" in s:
        yield _gauge("broker_connected", "1 while the MQTT link is up", int(s["broker_connected"]))
    if "state" in s:
        state = GaugeMetricFamily(f"{PREFIX}_state", "The status state: 1 for the current one", labels=["state"])
        for name in STATES:
            state.add_metric([name], int(s["state"] == name))
        yield state


class MetricsEndpoint:
    """The HTTP server on metrics.bind:metrics.port, in a daemon thread of prometheus-client's."""

    def __init__(self, cfg: MetricsConfig, *, device: str, version: str) -> None:
        self.cfg = cfg
        self.collector = StatsCollector(device=device, version=version)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen; raise OSError with a one-line message when the address cannot be had."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)  # a custom collector: anything with collect()
        where = f"{self.cfg.bind}:{self.cfg.port}" if ":" not in self.cfg.bind else f"[{self.cfg.bind}]:{self.cfg.port}"
        try:
            self._server, self._thread = start_http_server(self.cfg.port, addr=self.cfg.bind, registry=registry)
        except OSError as err:
            raise OSError(
                f"metrics: cannot serve /metrics on {where}: {err.strerror or err} "
                "(another program on metrics.port? metrics.bind not an address of this machine?)"
            ) from None

    def update(self, snapshot: Mapping[str, Any]) -> None:
        self.collector.update(snapshot)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
