"""Everything the agent says on the broker: results, events, stats, answers, config state, and
the notices about its own delivery (an outbox that overflowed, a state_dir that fails, a broker
that was away). One owner for the outbox, the sender and the event merger, so the order of what
goes out is decided in one place.

Events (and results with `persist_results`) go through the outbox: stored first, sent in order,
removed once acknowledged. Live results go straight to the link with the outbox's `seq`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.commands import CommandId, Request, busy_answer, cmd_answer, config_rejection
from edge_agent.config import AgentConfig
from edge_agent.core.retry import Backoff, RetrySchedule
from edge_agent.events import Event, EventMerger, Severity
from edge_agent.mqtt.link import MqttLink, Outage
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.sender import OutboxSender
from edge_agent.mqtt.topics import Topics
from edge_agent.pipeline import Inference, Pipeline
from edge_agent.sources.base import Frame
from edge_agent.stats import Stats

log = logging.getLogger("edge_agent.agent")

STORAGE_RETRY_S = 10.0


class Publisher:
    def __init__(
        self,
        cfg: AgentConfig,
        topics: Topics,
        link: MqttLink,
        outbox: Outbox,
        stats: Stats,
        *,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.link = link
        self.outbox = outbox
        self.stats = stats
        self.sender = OutboxSender(outbox, link)
        self.events = EventMerger(cfg.guard.event_interval_s)
        self._on_result = on_result
        self._overflowed = 0  # events the full outbox dropped, not said yet
        self._storage_reported = False
        self._storage_retry = RetrySchedule(Backoff.fixed(STORAGE_RETRY_S))
        # connection errors the link recovered from: handed over by paho's thread, raised by the loop
        self._outages: queue.SimpleQueue[Outage] = queue.SimpleQueue()
        self.config_state_due = True
        link.on_connected.append(self._on_link_connected)

    def adopt(self, cfg: AgentConfig) -> None:
        """A new running config: merged events of the old one go out first."""
        for ev in self.events.flush():
            self._publish_event(ev)
        self.cfg = cfg
        self.events = EventMerger(cfg.guard.event_interval_s)
        self.config_state_due = True

    # ---- events -------------------------------------------------------------------------
    def raise_event(self, kind: str, severity: Severity, message: str, detail: dict[str, Any] | None = None) -> None:
        self.stats.fault(kind)
        for ev in self.events.offer(Event(kind, severity, message, detail or {})):
            self._publish_event(ev)

    def _publish_event(self, ev: Event) -> None:
        # logged as published: a fault storm is merged in the log as on the events topic
        log.log(
            logging.ERROR if ev.severity in ("error", "critical") else logging.WARNING,
            "%s: %s",
            ev.kind,
            ev.message,
            extra={"event_kind": ev.kind},  # a field of its own in the journal
        )
        self._enqueue(self.topics.events, ev.payload, qos=self.cfg.mqtt.events_qos, kind="event")

    def _enqueue(self, topic: str, make: Callable[[int], dict[str, Any]], *, qos: int, kind: str) -> None:
        """Through the outbox: stored first, sent in order, removed once acknowledged."""
        put = self.outbox.put(topic, make, qos=qos, kind=kind)
        if put.dropped_results:
            self.stats.fault("outbox_dropped_results", put.dropped_results)
        if put.dropped_events:
            # said once the broker is reachable again (or at the stop): `_report_overflow`
            self.stats.fault("outbox_dropped_events", put.dropped_events)
            self._overflowed += put.dropped_events
        self.sender.pump()

    def _report_overflow(self) -> None:
        """One `outbox_overflow` per overflow with the total dropped: sent after the backlog it
        concerns. It pushes nothing out (an event per drop would fill the outbox with
        itself) and is not merged (a merged summary would lose the counts)."""
        n, self._overflowed = self._overflowed, 0
        ev = Event(
            "outbox_overflow",
            "error",
            f"the outbox reached mqtt.outbox_max_mb ({self.cfg.mqtt.outbox_max_mb:g} MB) while the broker was "
            f"unreachable: the {n} oldest queued events were dropped (results go first)",
            {"dropped_events": n},
        )
        self.stats.fault(ev.kind)
        log.error("%s: %s", ev.kind, ev.message)
        self.outbox.put(self.topics.events, ev.payload, qos=self.cfg.mqtt.events_qos, kind="event", evict=False)
        self.sender.pump()

    # ---- the broker link ------------------------------------------------------------------
    def _on_link_connected(self) -> None:
        # paho's network thread: only flags and queues; `housekeeping` publishes and raises the event
        self.config_state_due = True
        if self.link.outage is not None:
            self._outages.put(self.link.outage)

    def _raise_broker_errors(self) -> None:
        while not self._outages.empty():
            o = self._outages.get_nowait()
            attempts = f"{o.failed_attempts} connection attempt(s) failed" if o.failed_attempts else "reconnected"
            self.raise_event(
                "broker_error",
                "warning",
                f"the broker link was down for {o.down_s:.1f} s ({attempts}); last error: {o.last_error}",
                {
                    "failed_attempts": o.failed_attempts,
                    "last_error": o.last_error,
                    "down_s": round(o.down_s, 3),
                    "broker": f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}",
                },
            )

    def pump(self) -> int:
        """Hand queued messages to the link: called as often as the loop can."""
        return self.sender.pump()

    def pump_if_waiting(self) -> int:
        return self.sender.pump() if self.outbox.has_waiting() else 0

    def housekeeping(self, now: float, config_state: Callable[[], dict[str, Any]]) -> None:
        """Between two frames: the backlog, the overflow notice, the storage, broker errors,
        merged events that are due, and the retained config state after a (re)connect."""
        self.sender.pump()
        # once the backlog has been handed over: drops while it drains (the outbox is still full
        # when the link comes back) belong to the same overflow, and one notice counts them all
        if self._overflowed and self.link.connected and not self.outbox.has_waiting():
            self._report_overflow()
        self._storage_housekeeping(now)
        if self.config_state_due and self.link.connected:
            self.publish_config_state(config_state())
        self._raise_broker_errors()
        for ev in self.events.due():
            self._publish_event(ev)

    def _storage_housekeeping(self, now: float) -> None:
        """A failing state_dir: say so once per episode, retry the disk every STORAGE_RETRY_S."""
        err = self.outbox.storage_error
        if err is None:
            self._storage_reported = False
            return
        if not self._storage_reported:
            self._storage_reported = True
            self.raise_event(
                "storage_error",
                "error",
                f"{err}: queued messages are kept in memory (bounded by mqtt.outbox_max_mb) until the "
                "state_dir can be written again; a failing SD card is the usual cause",
                {"state_dir": self.cfg.device.state_dir},
            )
        if self._storage_retry.due(now):
            self._storage_retry.failed(now)
            if self.outbox.retry_disk():
                self._storage_retry.succeeded()
                self.raise_event(
                    "storage_recovered", "info", f"the outbox is back on disk in {self.cfg.device.state_dir}"
                )

    # ---- results and stats -----------------------------------------------------------------
    def publish_result(self, frame: Frame, inf: Inference, pipeline: Pipeline) -> None:
        model = pipeline.model
        topic = self.topics.results
        payload: dict[str, Any] = {
            "seq": 0,
            "ts": round(time.time(), 3),
            "frame": {"seq": frame.seq, "ts": round(frame.ts, 3), "source": frame.source},
            "model": {"name": model.name, "sha256": model.file.sha256},
            "latency_ms": inf.latency_ms,
            "task": pipeline.task,
            **inf.result.to_payload(),  # the one place a result becomes a dict
        }
        if inf.imputed:
            payload["imputed"] = list(inf.imputed)
            self.stats.count("imputed", inf.imputed)
        if inf.clipped:
            payload["clipped"] = list(inf.clipped)
            self.stats.count("clipped", inf.clipped)
        self.stats.record(inf.latency_ms)
        self.stats.results += 1
        if self.cfg.mqtt.persist_results:

            def with_seq(seq: int) -> dict[str, Any]:
                payload["seq"] = seq
                return payload

            self._enqueue(topic, with_seq, qos=self.cfg.mqtt.results_qos, kind="result")
        else:
            payload["seq"] = self.outbox.next_seq(topic)
            self.link.publish(topic, payload, qos=self.cfg.mqtt.results_qos)
        if self._on_result is not None:
            self._on_result(payload)

    def publish_stats(self, *, state: str, paused: bool, metrics: Any = None) -> None:
        depth = self.outbox.depth()
        outbox = {
            "depth": depth.count,
            "bytes": depth.bytes,
            "oldest_age_s": depth.oldest_age_s,
            "on_disk": depth.on_disk,
            "in_flight": self.sender.in_flight,
        }
        snap = self.stats.snapshot(state=state, paused=paused, broker_connected=self.link.connected, outbox=outbox)
        if metrics is not None:  # first: a scrape after the stats message never gets an older one
            metrics.update(snap)
        self.link.publish(self.topics.stats, snap, qos=0, retain=True)
        self.outbox.save_seqs()

    # ---- answers ----------------------------------------------------------------------------
    def answer_cmd(
        self, name: str, ok: bool, message: str, ids: Sequence[CommandId | None] = (None,), **extra: Any
    ) -> None:
        """One answer on cmd/result per command asked (`ids`: their ids, None for a command without)."""
        for cid in ids:
            self.link.publish(self.topics.cmd_result, cmd_answer(name, ok, message, cid, **extra), qos=1)

    def answer_busy(self, req: Request, waiting: int) -> None:
        """A request the full inbox cannot take (called from paho's thread: it only publishes)."""
        leaf, payload = busy_answer(req, waiting)
        self.link.publish(self.topics.leaf(leaf), payload, qos=1)

    def reject_update(self, version: Any, message: str, key: str = "remote") -> None:
        """A rejected update: answered on config/result and raised as config_rejected."""
        payload = config_rejection(version, key, message)
        self.link.publish(self.topics.config_result, payload, qos=1)
        self.raise_event(
            "config_rejected",
            "warning",
            f"update rejected: {key}: {message}",
            {"version": payload["version"], "key": key},
        )

    def answer_update(self, payload: dict[str, Any]) -> None:
        self.link.publish(self.topics.config_result, payload, qos=1)

    def publish_config_state(self, state: dict[str, Any]) -> None:
        self.config_state_due = False
        self.link.publish(self.topics.config_state, state, qos=1, retain=True)

    def publish_bytes(self, leaf: str, data: bytes) -> None:
        """A picture (snapshot JPEG, mask PNG) on P/D/<leaf>, QoS 0."""
        self.link.publish(self.topics.leaf(leaf), data, qos=0)

    # ---- the stop ---------------------------------------------------------------------------
    def flush(self) -> None:
        """At the stop: merged events, and the overflow notice (kept for the next start if the
        broker is away)."""
        for ev in self.events.flush():
            self._publish_event(ev)
        if self._overflowed:
            self._report_overflow()

    def close(self, drain_s: float = 3.0) -> None:
        # what the broker has not acknowledged stays in the outbox for the next start
        self.sender.drain(timeout=drain_s)
        self.outbox.close()
