"""The daemon: wires source, pipeline and broker link together and owns their lifecycle.

A missing or broken model never ends the process: the agent stays connected with status
`degraded`, raises `model_error`, and retries the file. A broken source is handled the
same way. Only an invalid config (found before this class is built) exits 2.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent import __version__
from edge_agent.accelerator import AcceleratorWatch
from edge_agent.background import BackgroundBuild
from edge_agent.commands import (
    COMMANDS,
    BadCommandIdError,
    CommandId,
    Inbox,
    Request,
    busy_answer,
    cmd_answer,
    command_id,
    config_rejection,
)
from edge_agent.config import AgentConfig, ModelConfig, load_config
from edge_agent.errors import ConfigError, ModelError, SourceError, SourceStalledError
from edge_agent.escalation import Escalation
from edge_agent.events import Event, EventMerger, Severity
from edge_agent.ha_discovery import Discovery
from edge_agent.mqtt.link import MqttLink, Outage
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.sender import OutboxSender
from edge_agent.mqtt.topics import Topics
from edge_agent.overlap import Inflight, Invoked, InvokeThread
from edge_agent.pipeline import Fault, Inference, Outcome, Pipeline, Skipped, Staged
from edge_agent.remote.document import UpdateRejectedError
from edge_agent.remote.fetch import download, remove_partial_downloads
from edge_agent.remote.overlay import build_config
from edge_agent.remote.probation import Probation
from edge_agent.remote.state import config_state
from edge_agent.remote.updater import AlreadyApplied, Prepared, RemoteUpdates, StartupProblem
from edge_agent.runtime.backends import select_backend
from edge_agent.runtime.worker import BackendFactory
from edge_agent.service import Notifier
from edge_agent.snapshot import encode_within
from edge_agent.sources import SourceProblem, open_source
from edge_agent.sources.base import Frame
from edge_agent.sources.capture import NOTHING, CaptureThread, Nothing
from edge_agent.stats import Stats

if TYPE_CHECKING:
    from edge_agent.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

# a failed source is reopened after this, doubling up to source.reconnect_max_s
SOURCE_RETRY_MIN_S = 0.5
STORAGE_RETRY_S = 10.0
# EX_TEMPFAIL: the guard asks for a restart; systemd's Restart=on-failure performs it
EXIT_RESTART = 75
IDLE_SLEEP_S = 0.2
# sources configured from the model's input: opened after the model
MODEL_SHAPED_SOURCES = ("wav", "picamera2")
# an event names the values of a sensor row; longer vectors (audio windows) are summarised
EVIDENCE_VALUES_MAX = 64
TAKE_WAIT_S = 0.05  # the longest the loop waits for a frame before serving the broker and the watchdog


@dataclass(frozen=True)
class ModelStamp:
    """Enough of a file's identity to notice that it was replaced."""

    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: str) -> ModelStamp | None:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size)


def _feature_names(cfg: AgentConfig) -> tuple[str, ...]:
    return tuple(f.name for f in cfg.preprocess.features) if cfg.preprocess else ()


def _source_changed(old: AgentConfig, new: AgentConfig) -> bool:
    """Whether a reload must reopen the source: its section, or what it was opened with."""
    return (
        new.source != old.source
        or _feature_names(new) != _feature_names(old)
        or (new.source.kind == "mqtt" and (new.mqtt != old.mqtt or new.device.id != old.device.id))
    )


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        config_path: str | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        # the file config, with the remote update applied before (state_dir/applied.json) on top
        self.remote = RemoteUpdates(cfg)
        self.cfg, problem = self.remote.effective()
        self._startup_problems: list[StartupProblem] = [problem] if problem else []
        self._update_build: BackgroundBuild[tuple[Prepared, Pipeline | None]] | None = None
        self._probation: Probation | None = None
        self._config_state_due = True
        # the interpreter package; None: as model.interpreter says (tests stand in for a Coral here)
        self._backend_factory = backend_factory
        self.config_path = config_path  # re-read on SIGHUP
        self._reload_requested = False
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id)
        self.stats = Stats()
        self.events = EventMerger(cfg.guard.event_interval_s)
        self.pipeline: Pipeline | None = None
        self.source: CaptureThread | None = None
        self.state = "degraded"
        self.since = time.time()
        self._stop = threading.Event()
        # the signal that asked for a stop: set by the handler, turned into _stop by the loop
        self._stop_signal: int | None = None
        self._on_result = on_result
        self._model_stamp: ModelStamp | None = None
        self._next_model_try = 0.0
        self._next_source_try = 0.0
        self._source_retry_s = SOURCE_RETRY_MIN_S  # the next wait; reset by a frame
        self._next_stats = 0.0
        self._last_frame_at = 0.0
        self._source_done = False
        self.paused = False
        self._overflowed = 0  # events the full outbox dropped, not said yet
        self._storage_reported = False
        self._next_storage_try = 0.0
        # opened here so that events raised from the start (model_error) are queued too
        state = Path(cfg.device.state_dir)
        self.outbox = Outbox(state / "outbox.sqlite", max_bytes=int(cfg.mqtt.outbox_max_mb * 1024 * 1024))
        self.inbox = Inbox(answer_busy=self._answer_busy)
        # a snapshot is taken from the next frame while the source still lends it (frames are
        # not copied per frame: a camera's buffer may be gone once released); the ids of the
        # commands waiting for it, each answered by the same snapshot
        self._snapshot_wanted: list[CommandId | None] = []
        self._mask_wanted: list[CommandId | None] = []  # segmentation: the next result's mask as PNG on P/D/mask
        self._frames_read = 0
        self.exit_code = 0
        g = cfg.guard
        self.escalation = Escalation(
            degrade_after=g.degrade_after, act_after=g.act_after, recover_after=g.recover_after
        )
        self.interpreter_name = "none"
        self.link = MqttLink(cfg.mqtt, self.topics, status_payload=self._status_payload, initial_state=self.state)
        # connection errors the link recovered from: handed over by paho's thread, raised by the loop
        self._outages: queue.SimpleQueue[Outage] = queue.SimpleQueue()
        self.link.on_connected.append(self._on_link_connected)
        # Home Assistant discovery: published (or cleared) on every connect, from paho's thread
        self.ha = Discovery(cfg.homeassistant, self.topics, state, version=__version__, publish=self.link.publish)
        self.link.on_connected.append(self.ha.on_connected)
        self.metrics: MetricsEndpoint | None = None
        self.sender = OutboxSender(self.outbox, self.link)
        self.notifier = Notifier()
        self._selftest_ok = False
        self._last_inference_at = -1e18
        self._next_ping = 0.0
        self._watchdog_off = False
        self._stall_after_s: float | None = None
        # overlap: the frame in invoke() (its result concluded when the next frame is staged)
        self._inflight: Inflight | None = None
        self._invoker: InvokeThread | None = None
        self._staging: list[npt.NDArray[Any]] = []
        self._staging_next = 0
        self.accel = AcceleratorWatch(lose_after=cfg.model.delegate_lost_after, retry_s=cfg.model.edgetpu_retry_s)
        self._tpu_wanted = False  # on the CPU because the Edge TPU failed or was missing: retry it
        self._tpu_probe: BackgroundBuild[Pipeline] | None = None

    # ---- status -------------------------------------------------------------------------
    def _status_payload(self, state: str) -> dict[str, Any]:
        p = self.pipeline
        model = (
            {"name": p.model.name, "sha256": p.model.file.sha256, "delegate": p.model.delegate}
            if p is not None
            else {"name": Path(self.cfg.model.path).name, "sha256": None, "delegate": None}
        )
        return {
            "state": state,
            "version": __version__,
            "model": model,
            "interpreter": self.interpreter_name,
            "since": round(self.since, 3),
            # SPEC fixes `state`; a paused agent is online but publishes nothing, which a consumer
            # must be able to tell from a stuck one
            "paused": self.paused,
        }

    def _set_paused(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            self.link.publish_status(self.state)
            self._next_stats = 0.0  # the stats say so at once too

    def _set_state(self, state: str) -> None:
        # the link republishes the status on every (re)connect; here only changes go out
        if state == self.state:
            return
        log.info("status: %s → %s", self.state, state)
        self.state = state
        self.since = time.time()
        self.link.publish_status(state)

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

    def _on_link_connected(self) -> None:
        # paho's network thread: only flags and queues; `_step` publishes and raises the event
        self._config_state_due = True
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

    # ---- model and source lifecycle -----------------------------------------------------
    def _try_load_model(self, now: float) -> None:
        stamp = ModelStamp.of(self.cfg.model.path)
        # retry at the interval, or at once when the file appears or changes
        if now < self._next_model_try and stamp == self._model_stamp:
            return
        self._model_stamp = stamp
        self._next_model_try = now + self.cfg.model.retry_interval_s
        pipeline = None
        try:
            pipeline = Pipeline.load(self.cfg, backend_factory=self._backend_factory)
            outcome = pipeline.selftest()
        except ModelError as err:
            if pipeline is not None:
                pipeline.close()
            self.raise_event(
                "model_error",
                "error",
                f"{err} (retrying every {self.cfg.model.retry_interval_s:g} s)",
                {"path": self.cfg.model.path, "reason": err.reason},
            )
            self._set_state("degraded")
            return
        for w in pipeline.warnings:
            log.warning("%s", w)
        # systemd hears READY only after a self-test inference passed the guard
        self._selftest_ok = isinstance(outcome, Inference)
        if isinstance(outcome, Fault):
            self.raise_event(
                outcome.fault.kind, "error", f"self-test inference: {outcome.fault.message}", outcome.fault.detail
            )
        self._set_pipeline(pipeline)
        m = self.cfg.model
        self._tpu_wanted = m.delegate == "edgetpu" and pipeline.model.delegate == "cpu"
        if self._tpu_wanted:
            self.accel.on_cpu(now)
            self.raise_event(
                "delegate_unavailable",
                "error",
                f"{'; '.join(pipeline.model.notes) or 'the Edge TPU is unavailable'}: running {pipeline.model.name} "
                f"on the CPU, retrying the Edge TPU every {m.edgetpu_retry_s:g} s",
                {"device": m.edgetpu_device or "any", **self._model_detail()},
            )
        log.info(
            "model %s loaded (%s, sha256 %s, interpreter %s %s, %d threads)",
            pipeline.model.name,
            pipeline.model.delegate,
            pipeline.model.file.sha256[:12],
            pipeline.model.backend.name,
            pipeline.model.backend.version,
            pipeline.model.threads,
        )
        if self.source is not None:
            self._set_state("online")

    def _try_open_source(self, now: float) -> None:
        if now < self._next_source_try:
            return
        p = self.pipeline
        if p is None and self.cfg.source.kind in MODEL_SHAPED_SOURCES:
            return  # opened once the model says its input size (the camera's stream, the audio window)
        shape = tuple(p.model.inputs[0].shape) if p is not None else ()
        t = p.pre.transform if p is not None and not p.pre.vector else None
        try:
            src = open_source(
                self.cfg.source,
                feature_names=_feature_names(self.cfg),
                input_length=int(np.prod(shape)) if shape else None,
                # an image input [1, H, W, C]: a camera can deliver that size and pixel order itself
                model_size=(int(shape[2]), int(shape[1])) if t is not None and len(shape) == 4 else None,
                model_order=t.color if t is not None and t.color in ("rgb", "bgr", "gray") else None,  # type: ignore[arg-type]
                model_resize=t.resize if t is not None else None,  # type: ignore[arg-type]
                broker=self.cfg.mqtt,
                device_id=self.cfg.device.id,
            )
        except SourceError as err:
            delay = self._source_backoff()
            self.raise_event("source_error", "error", f"{err} (retrying in {delay:g} s)")
            self._set_state("degraded")
            return
        # live sources (cameras, streams): the newest frame wins; files, rows, topics: every item counts
        live = bool(getattr(src, "live", False))
        self.source = CaptureThread(src, "latest" if live else "every")
        self._stall_after_s = self.cfg.source.stall_after_s or getattr(src, "stall_after_s", None)
        log.info("source %s opened (%s)", src.name, "live: the newest frame wins" if live else "every item")
        if self.pipeline is not None:
            self._set_state("online")

    def _source_backoff(self) -> float:
        """Schedule the next open of a failed source; the wait doubles while it keeps failing."""
        delay = self._source_retry_s
        self._next_source_try = time.monotonic() + delay
        self._source_retry_s = min(delay * 2, self.cfg.source.reconnect_max_s)
        return delay

    # ---- the loop -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            # No lock may be taken here: the handler runs in the loop's thread between two
            # bytecodes, possibly while that thread holds the lock of the very Event (inside
            # _stop.wait()) that set() would take, and the agent would hang for good on SIGTERM.
            # A plain attribute; the loop reads it every few milliseconds.
            self._stop_signal = signum

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

        def hup(_signum: int, _frame: Any) -> None:
            self._reload_requested = True  # acted on between two frames, not inside the handler

        signal.signal(signal.SIGHUP, hup)

    def _reload(self, *, asked_by: str = "SIGHUP") -> tuple[bool, str]:
        """SIGHUP and `cmd/reload`, one path: re-read the config file (if the agent has one) and
        the model, both built and self-tested before anything is swapped, so an invalid file or a
        model that is missing, corrupt or fails its self-test changes nothing: the running config
        and model stay. Parts that cannot change without a restart (the broker link, the device
        id) are named. Returns whether it took, and the one line that says so."""
        self._reload_requested = False
        self._complete_inflight()
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            ok, message = self._reload_now()
        finally:
            self.notifier.send("READY=1", f"STATUS={self._status_text()}")
        if ok:
            log.info("%s: %s", asked_by, message)
        else:
            self.raise_event("config_rejected", "warning", f"{asked_by}: {message}", {"reason": "reload_failed"})
        return ok, message

    def _reload_now(self) -> tuple[bool, str]:
        new = self.cfg
        file_cfg = self.remote.file_cfg
        if self.config_path is not None:
            try:
                file_cfg = load_config(self.config_path)
            except ConfigError as err:
                return False, (
                    f"config reload from {self.config_path} failed, keeping the running config: "
                    + "; ".join(err.problems)
                )
            restart_only = ("mqtt", "device", "homeassistant", "metrics")
            kept = [name for name in restart_only if getattr(file_cfg, name) != getattr(self.cfg, name)]
            if kept:
                log.warning(
                    "config reload: [%s] changed; that takes a restart, the running values are kept", ", ".join(kept)
                )
                file_cfg = file_cfg.model_copy(update={name: getattr(self.cfg, name) for name in restart_only})
            new = file_cfg
            if self.remote.applied.overlay:  # the applied remote update stays on top of the new file
                try:
                    new = build_config(file_cfg, self.remote.applied.overlay)
                except UpdateRejectedError as err:
                    return False, (
                        f"config reload: the applied update {self.remote.version} does not fit the new file "
                        f"({err}), keeping the running config"
                    )
        # the model is built again too (a file replaced in place is picked up, a wedged interpreter
        # is renewed), and self-tested before the swap: a failure changes nothing
        running = self.pipeline
        try:
            pipeline = self._build_checked(new)
        except ModelError as err:
            what = "keeping the running model" if running is not None else "no model is running"
            return False, f"the model cannot be used, {what} and the running config: {err}"
        self._model_stamp = ModelStamp.of(new.model.path)
        self.remote.file_cfg = file_cfg
        self._adopt_config(new, pipeline)
        if pipeline is not None and self.source is not None:
            self._set_state("online")
        source = f" from {self.config_path}" if self.config_path is not None else ""
        return True, f"config{source} and model {pipeline.model.name} reloaded"

    def _build_checked(self, cfg: AgentConfig) -> Pipeline:
        """A pipeline for `cfg` whose self-test passed the guard, or ModelError (nothing is kept)."""
        pipeline = Pipeline.load(cfg, backend_factory=self._backend_factory)
        try:
            outcome = pipeline.selftest()
        except ModelError:
            pipeline.close()
            raise
        if isinstance(outcome, Fault):
            pipeline.close()
            f = outcome.fault
            raise ModelError(f"the self-test did not pass the guard ({f.kind}: {f.message})", reason="selftest_failed")
        return pipeline

    def _adopt_config(self, new: AgentConfig, pipeline: Pipeline | None) -> None:
        """Make `new` the running config, with its pipeline built beforehand (between two frames)."""
        if self.source is not None and _source_changed(self.cfg, new):
            self.source.close()
            self.source = None
            self._source_done = False
            self._next_source_try = 0.0
            self._source_retry_s = SOURCE_RETRY_MIN_S
        self.cfg = new
        self._set_pipeline(pipeline)
        self._next_model_try = 0.0
        for ev in self.events.flush():
            self._publish_event(ev)
        self.events = EventMerger(new.guard.event_interval_s)
        g = new.guard
        self.escalation = Escalation(
            degrade_after=g.degrade_after, act_after=g.act_after, recover_after=g.recover_after
        )
        self.accel = AcceleratorWatch(lose_after=new.model.delegate_lost_after, retry_s=new.model.edgetpu_retry_s)
        self._tpu_wanted = False
        logging.getLogger().setLevel(getattr(logging, new.service.log_level.upper(), logging.INFO))
        self.link.publish_status(self.state)  # the status names the model
        self._config_state_due = True

    def run(self) -> int:
        try:
            backend = select_backend(self.cfg.model.interpreter)
            self.interpreter_name = f"{backend.name} {backend.version}"
            log.info("interpreter: %s", self.interpreter_name)
        except ModelError as err:
            log.error("%s", err)
            self.interpreter_name = "unavailable"
        self._subscribe()
        self._start_metrics()
        self.link.start()
        self.link.wait_connected(5.0)
        remove_partial_downloads(self.remote.model_dir)
        for problem in self._startup_problems:
            self.raise_event(problem.kind, "error", problem.message, {"version": self.remote.version})
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._shutdown()
        return self.exit_code

    def _start_metrics(self) -> None:
        """The optional /metrics endpoint; a failure is reported and the agent goes on without it."""
        m = self.cfg.metrics
        if not m.enabled:
            return
        detail = {"bind": m.bind, "port": m.port}
        try:
            from edge_agent.metrics import MetricsEndpoint  # noqa: PLC0415 - the optional `metrics` extra
        except ImportError:
            self.raise_event(
                "metrics_error",
                "error",
                "metrics.enabled = true needs prometheus-client (pip install 'edge-agent[metrics]'): going on without /metrics",
                detail,
            )
            return
        endpoint = MetricsEndpoint(m, device=self.cfg.device.id, version=__version__)
        try:
            endpoint.start()
        except OSError as err:
            self.raise_event("metrics_error", "error", f"{err}: going on without /metrics", detail)
            return
        self.metrics = endpoint
        log.info("serving /metrics on %s:%d", *(endpoint.address or (m.bind, m.port)))

    def _stop_if_signalled(self) -> bool:
        signum = self._stop_signal
        if signum is not None and not self._stop.is_set():
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.stop()
        return signum is not None

    def _step(self) -> None:
        if self._stop_if_signalled():
            return
        now = time.monotonic()
        if self._reload_requested:
            self._reload()
        if self.source is None:
            self._try_open_source(now)
        if self.pipeline is None:
            self._try_load_model(now)
        self.sender.pump()
        self.ha.poll()
        # once the backlog has been handed over: drops while it drains (the outbox is still full
        # when the link comes back) belong to the same overflow, and one notice counts them all
        if self._overflowed and self.link.connected and not self.outbox.has_waiting():
            self._report_overflow()
        self._watchdog(now)
        self._storage_housekeeping(now)
        self._edgetpu_housekeeping(now)
        self._update_housekeeping()
        if self._config_state_due and self.link.connected:
            self._publish_config_state()
        if now >= self._next_stats:
            self._publish_stats()
            self.notifier.status(self._status_text())
            self.outbox.save_seqs()
            self._next_stats = now + self.cfg.service.stats_interval_s
        self._raise_broker_errors()
        for ev in self.events.due():
            self._publish_event(ev)
        for req in self.inbox.drain():
            self._complete_inflight()  # commands and updates act between two frames, none in flight
            self._serve(req)
        if self.paused:
            self._complete_inflight()
            self._idle(IDLE_SLEEP_S)
            return
        if self.pipeline is None or self.source is None or self._source_done:
            self._complete_inflight()
            self._idle(IDLE_SLEEP_S)
            return
        paced_from = self._last_frame_at
        self._pace()
        limit = self.cfg.source.max_frames
        try:
            # with a frame in flight, only a frame ready now is prepared alongside; else its result goes out first
            wait = 0.0 if self._inflight is not None else TAKE_WAIT_S
            item = None if limit is not None and self._frames_read >= limit else self.source.take(wait)
        except SourceError as err:
            # e.g. a looping CSV whose file vanished, a frozen camera: report, drop the source, reopen later
            self._drop_source("source_stalled" if isinstance(err, SourceStalledError) else "source_error", str(err))
            return
        if item is NOTHING:
            # no frame was taken: the next one is not held back by the frame pacing
            self._last_frame_at = paced_from
            if self._inflight is not None:
                self._complete_inflight()
                return
            self._check_stall()
            return
        if item is None:
            self._complete_inflight()
            self._source_done = True
            log.info("source %s exhausted", self.source.name)
            if self.cfg.source.exit_when_done:
                self.stop()
            return
        assert not isinstance(item, Nothing)
        self._frames_read += 1
        if isinstance(item, SourceProblem):
            self.raise_event("source_error", "warning", f"{item.source}: {item.message}", {"source": item.source})
            return
        # frames flow again: the next failure is retried quickly
        self._source_retry_s = SOURCE_RETRY_MIN_S
        self._handle(item)  # which gives the frame back to the source once done with it

    def _drop_source(self, kind: str, message: str) -> None:
        assert self.source is not None
        delay = self._source_backoff()
        self.raise_event(kind, "error", f"{message} (reopening in {delay:g} s)", {"source": self.source.name})
        self._publish_source_counters()
        self.source.close()
        self.source = None
        self._set_state("degraded")

    def _check_stall(self) -> None:
        """No frame for stall_after_s from a live source (a camera whose read() blocks for good, a
        stream gone silent): say so, close it, reopen it. The watchdog pings have stopped already."""
        if self.source is None or not self._stall_after_s or self.paused:
            return
        quiet = time.monotonic() - self.source.last_frame_mono
        if quiet >= self._stall_after_s:
            self._drop_source(
                "source_stalled", f"{self.source.name}: no frame for {quiet:.1f} s (source.stall_after_s)"
            )

    def _publish_source_counters(self) -> None:
        """Frames a live source skipped (a newer one arrived first) go into the stats totals."""
        if self.source is not None:
            self.stats.dropped += self.source.skipped
            self.source.skipped = 0

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
        if now >= self._next_storage_try:
            self._next_storage_try = now + STORAGE_RETRY_S
            if self.outbox.retry_disk():
                self.raise_event(
                    "storage_recovered", "info", f"the outbox is back on disk in {self.cfg.device.state_dir}"
                )

    # ---- commands and config updates -------------------------------------------------------
    def _subscribe(self) -> None:
        t = self.topics
        # a retained command would act at every start and reconnect: ignored (see MqttLink.subscribe)
        self.link.subscribe(f"{t.prefix}/{t.device}/cmd/+", self.inbox.on_cmd, self.inbox.reject, accept_retained=False)
        for topic in (t.config_set(), *(t.group_config_set(g) for g in self.cfg.device.groups)):
            self.link.subscribe(topic, self.inbox.on_config, self.inbox.reject)

    def _answer_cmd(
        self, name: str, ok: bool, message: str, ids: Sequence[CommandId | None] = (None,), **extra: Any
    ) -> None:
        """One answer on cmd/result per command asked (`ids`: their ids, None for a command without)."""
        for cid in ids:
            self.link.publish(self.topics.cmd_result, cmd_answer(name, ok, message, cid, **extra), qos=1)

    def _answer_busy(self, req: Request) -> None:
        """A request the full inbox cannot take (called from paho's thread: it only publishes)."""
        leaf, payload = busy_answer(req, self.inbox.waiting())
        self.link.publish(self.topics.leaf(leaf), payload, qos=1)

    def _serve(self, req: Request) -> None:
        if req.kind == "reject":
            if "/config/" in req.topic:
                self._answer_config(None, req.reason, "document")  # raises config_rejected
                return
            self._answer_cmd(req.topic.rsplit("/", 1)[-1], False, f"rejected: {req.reason}")
            self.raise_event("message_rejected", "warning", f"{req.topic}: {req.reason}", {"topic": req.topic})
            return
        if req.kind == "config":
            self._consider_update(req.payload)
            return
        self._command(req.name, req.payload)

    def _answer_config(self, version: Any, message: str, key: str = "remote") -> None:
        """A rejected update: answered on config/result and raised as config_rejected."""
        payload = config_rejection(version, key, message)
        self.link.publish(self.topics.config_result, payload, qos=1)
        self.raise_event(
            "config_rejected",
            "warning",
            f"update rejected: {key}: {message}",
            {"version": payload["version"], "key": key},
        )

    # ---- remote updates -------------------------------------------------------------------
    def _consider_update(self, payload: Any) -> None:
        version = payload.get("version") if isinstance(payload, dict) else None
        if not self.cfg.remote.enabled:
            self._answer_config(version, "remote updates are disabled on this device (remote.enabled = false)")
            return
        if self._update_build is not None or self._probation is not None:
            busy = "being applied" if self._update_build is not None else "on probation (its first frames are watched)"
            self._answer_config(
                version, f"update {self._pending_version()} is {busy}: send this one again later", "version"
            )
            return
        try:
            checked = self.remote.check(payload)
        except UpdateRejectedError as err:
            self._answer_config(version, err.message, err.key)
            return
        if isinstance(checked, AlreadyApplied):
            self.link.publish(
                self.topics.config_result,
                {"version": checked.version, "applied": True, "errors": [], "note": "already applied"},
                qos=1,
            )
            return
        running = self.cfg
        log.info("update %d accepted (%s): building it", checked.version, ", ".join(checked.keys))
        self._update_build = BackgroundBuild(
            lambda: self._build_update(checked, running), name=f"update-{checked.version}", tag=checked
        )

    def _pending_version(self) -> int:
        if self._update_build is not None:
            tag = self._update_build.tag
            return tag.version if isinstance(tag, Prepared) else 0
        return self._probation.version if self._probation is not None else 0

    def _build_update(self, prepared: Prepared, running: AgentConfig) -> tuple[Prepared, Pipeline | None]:
        """Off the loop: download, load in a fresh interpreter, self-test. Nothing is swapped here."""
        r = self.remote.file_cfg.remote
        for d in prepared.downloads:
            download(d.url, d.dest, d.sha256, max_bytes=int(r.max_model_mb * 1e6), timeout_s=r.download_timeout_s)
        if not prepared.rebuilds_pipeline(running):
            return prepared, None
        try:
            pipeline = Pipeline.load(prepared.cfg, backend_factory=self._backend_factory)
        except ModelError as err:
            raise UpdateRejectedError("model", f"the new model cannot be used: {err}") from None
        try:
            outcome = pipeline.selftest()
        except ModelError as err:
            pipeline.close()
            raise UpdateRejectedError("model", f"the self-test failed: {err}") from None
        if not isinstance(outcome, Inference):
            pipeline.close()
            why = f"{outcome.fault.kind}: {outcome.fault.message}" if isinstance(outcome, Fault) else outcome.message
            raise UpdateRejectedError("model", f"the self-test did not pass the guard ({why})")
        return prepared, pipeline

    def _update_housekeeping(self) -> None:
        build = self._update_build
        if build is None or not build.done():
            return
        self._update_build = None
        self._complete_inflight()
        prepared = build.tag
        assert isinstance(prepared, Prepared)
        try:
            _, pipeline = build.result()
        except UpdateRejectedError as err:
            self._answer_config(prepared.version, err.message, err.key)
            return
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the running config stays
            self._answer_config(prepared.version, f"{type(err).__name__}: {err}", "config")
            return
        previous_cfg, previous_overlay = self.cfg, self.remote.applied.overlay
        old_pipeline = self.pipeline
        model_changed = prepared.changes_model(previous_cfg) and pipeline is not None
        if model_changed and old_pipeline is not None:
            self.pipeline = None  # kept aside for a rollback, not closed: see Probation
        self._adopt_config(prepared.cfg, pipeline if pipeline is not None else old_pipeline)
        self.remote.commit(prepared)
        if model_changed and old_pipeline is not None:
            r = prepared.cfg.remote
            self._probation = Probation(
                prepared.version,
                r.probation_frames,
                r.rollback_after_faults,
                old_pipeline,
                previous_cfg,
                previous_overlay,
            )
        self._publish_config_state()  # before the answer: whoever reads the state after it sees the new version
        self.link.publish(
            self.topics.config_result, {"version": prepared.version, "applied": True, "errors": []}, qos=1
        )
        self.raise_event(
            "config_applied",
            "info",
            f"update {prepared.version} applied ({', '.join(prepared.keys)})",
            {"version": prepared.version, "keys": list(prepared.keys), **self._model_detail()},
        )
        self._config_state_due = True

    def _watch_probation(self, faulty: bool) -> None:
        """The first frames after a model update: too many faults roll the model back."""
        pb = self._probation
        if pb is None:
            return
        pb.frames += 1
        pb.faults += int(faulty)
        if pb.faults > pb.fault_limit:
            self._roll_back(pb)
        elif pb.frames >= pb.frame_limit:
            self._probation = None
            pb.old_pipeline.close()
            log.info("update %d passed its probation (%d faults in %d frames)", pb.version, pb.faults, pb.frames)

    def _roll_back(self, pb: Probation) -> None:
        self._probation = None
        why = f"{pb.faults} faulty frames in the first {pb.frames} after the model update (limit {pb.fault_limit})"
        new_name = self.pipeline.model.name if self.pipeline is not None else "?"
        self._adopt_config(pb.old_cfg, pb.old_pipeline)
        self.remote.roll_back(pb.version, pb.old_overlay, why)
        self.link.publish(
            self.topics.config_result,
            {"version": pb.version, "applied": False, "errors": [{"key": "model", "message": f"rolled back: {why}"}]},
            qos=1,
        )
        self.raise_event(
            "model_error",
            "error",
            f"update {pb.version}: {new_name} rolled back to {pb.old_pipeline.model.name}: {why}",
            {"version": pb.version, "reason": "rolled_back", **self._model_detail()},
        )
        self._config_state_due = True

    def _publish_config_state(self) -> None:
        self._config_state_due = False
        self.link.publish(self.topics.config_state, config_state(self.cfg, self.remote.version), qos=1, retain=True)

    def _command(self, name: str, args: Any) -> None:
        try:
            cid = command_id(args)
        except BadCommandIdError as err:
            self._answer_cmd(name, False, str(err))
            return

        def answer(ok: bool, message: str) -> None:
            self._answer_cmd(name, ok, message, (cid,))

        if name not in COMMANDS:
            answer(False, f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
            return
        if name == "pause":
            self._set_paused(True)
            answer(True, "inference paused")
        elif name == "resume":
            self._set_paused(False)
            answer(True, "inference resumed")
        elif name == "selftest":
            if self.pipeline is None:
                answer(False, "no model loaded")
                return
            try:
                outcome = self.pipeline.selftest()
            except ModelError as err:
                answer(False, str(err))
                return
            if isinstance(outcome, Inference):
                answer(True, "self-test passed the guard")
            elif isinstance(outcome, Fault):
                answer(False, f"self-test failed: {outcome.fault.kind}: {outcome.fault.message}")
            else:
                answer(False, f"self-test skipped: {outcome.message}")
        elif name == "reload":
            # the same path as SIGHUP: the config file and the model again, the running ones kept on failure
            answer(*self._reload(asked_by="cmd/reload"))
        elif name == "mask":
            if self.pipeline is None or self.pipeline.segmenter is None:
                answer(False, "the model is not a segmentation model (model.task)")
            elif self.paused or self.source is None or self._source_done:
                answer(False, "no frames are flowing (paused, finished or degraded)")
            else:
                self._mask_wanted.append(cid)  # answered by `_publish_mask` after the next result
        else:  # snapshot: the next frame as JPEG on P/D/snapshot
            if self.paused or self.source is None or self.pipeline is None or self._source_done:
                answer(False, "no frames are flowing (paused, finished or degraded)")
                return
            self._snapshot_wanted.append(cid)  # answered by `_take_snapshot` on the next frame

    def _take_snapshot(self, frame: Frame) -> None:
        ids, self._snapshot_wanted = self._snapshot_wanted, []
        if frame.pixels is None:
            self._answer_cmd("snapshot", False, "the source delivers sensor rows, not images", ids)
            return
        pixels = frame.pixels if frame.order != "rgb" else cv2.cvtColor(frame.pixels, cv2.COLOR_RGB2BGR)
        limit = self.cfg.service.snapshot_max_kb * 1024
        shot = encode_within(pixels, limit)
        if shot is None:
            self._answer_cmd("snapshot", False, f"the frame does not fit service.snapshot_max_kb ({limit} bytes)", ids)
            return
        self.link.publish(f"{self.topics.prefix}/{self.topics.device}/snapshot", shot.jpeg, qos=0)
        self._answer_cmd(
            "snapshot",
            True,
            "snapshot published",
            ids,
            bytes=len(shot.jpeg),
            width=shot.width,
            height=shot.height,
            quality=shot.quality,
            frame_seq=frame.seq,
        )

    def _publish_mask(self, frame: Frame) -> None:
        """The mask of the result just published, as PNG on P/D/mask (see postprocess/segmentation.py)."""
        ids, self._mask_wanted = self._mask_wanted, []
        seg = self.pipeline.segmenter if self.pipeline is not None else None
        if seg is None:
            self._answer_cmd("mask", False, "the model is not a segmentation model (model.task)", ids)
            return
        try:
            png, width, height = seg.mask_png()
        except ValueError as err:
            self._answer_cmd("mask", False, str(err), ids)
            return
        self.link.publish(f"{self.topics.prefix}/{self.topics.device}/mask", png, qos=0)
        self._answer_cmd(
            "mask", True, "mask published", ids, bytes=len(png), width=width, height=height, frame_seq=frame.seq
        )

    def _watchdog(self, now: float) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, only while frames really flow through inference
        (or the agent is idle by design: paused, source finished, no model yet). A hung invoke or
        capture blocks this loop, so the pings stop and systemd restarts the service."""
        interval = self.notifier.watchdog_interval_s
        if interval is None or self._watchdog_off or now < self._next_ping:
            return
        fps = self.cfg.source.fps
        window = max(2 * interval, 3.0 / fps if fps else 0.0)
        flowing = now - self._last_inference_at <= window
        idle_by_design = (
            self.paused
            or self._source_done
            or self.pipeline is None
            or self.source is None
            # a watched folder or a topic with nothing new: its read() answers, it is not hung
            or self.source.waiting
        )
        if flowing or idle_by_design:
            self.notifier.watchdog()
            self._next_ping = now + interval

    def _status_text(self) -> str:
        p = self.pipeline
        model = f"{p.model.name} ({p.model.delegate})" if p is not None else "no model"
        avg_fps = self.stats.frames / max(time.monotonic() - self.stats.started, 1e-6)
        broker = "broker connected" if self.link.connected else "broker unreachable"
        return f"{self.state}; {model}; {avg_fps:.1f} fps average; {broker}; outbox {self.outbox.depth().count}"

    def _idle(self, seconds: float) -> None:
        """Wait (for the frame pacing, or while degraded) while still draining the outbox, so a
        backlog is not held to the frame rate."""
        deadline = time.monotonic() + seconds
        while not self._stop_if_signalled() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            handed = self.sender.pump() if self.outbox.has_waiting() else 0
            self._watchdog(time.monotonic())
            self._stop.wait(min(left, 0.002 if handed else 0.02))

    def _pace(self) -> None:
        fps = self.cfg.source.fps
        if fps:
            wait = self._last_frame_at + 1.0 / fps - time.monotonic()
            if wait > 0:
                # the frame in flight is concluded first: its result must not wait for the next
                # frame's slot (there is time to spare, so nothing is gained by overlapping)
                self._complete_inflight()
                wait = self._last_frame_at + 1.0 / fps - time.monotonic()
                if wait > 0:
                    self._idle(wait)
        self._last_frame_at = time.monotonic()

    def _handle(self, frame: Frame) -> None:
        assert self.pipeline is not None and self.source is not None
        self.stats.frames += 1
        if self._snapshot_wanted:
            self._take_snapshot(frame)
        if not self.cfg.model.overlap:
            source = self.source
            try:
                try:
                    outcome = self.pipeline.process(frame)
                except ModelError as err:
                    self._model_failed(frame, err)
                    return
                self._conclude(frame, outcome)
            finally:
                source.release(frame)
            return
        self._overlapped(frame)

    # ---- overlap: frame N+1 prepared, and N's result published, while N+1... N is inferred ----
    def _overlapped(self, frame: Frame) -> None:
        """Stage frame N+1 while N is in invoke(); then start N+1 and conclude N meanwhile."""
        p, source = self.pipeline, self.source
        assert p is not None and source is not None
        invoker = self._invoker_for(p)
        buf = self._staging[self._staging_next]
        self._staging_next ^= 1
        try:
            staged = p.stage(frame, lambda: buf)
        finally:
            p.pre.forget_frame()  # the plan keeps no view of a lent buffer
        done = self._collect_inflight()
        if isinstance(staged, Staged):
            view = p.model.input_view(0)()
            np.copyto(view, buf)
            del view  # the interpreter refuses to invoke while a view of its memory is alive
            invoker.submit()
            self._inflight = Inflight(staged, p, invoker, source)
        if done is not None:
            self._conclude_inflight(*done)
        if not isinstance(staged, Staged):
            try:
                self._conclude(frame, staged)
            finally:
                source.release(frame)

    def _invoker_for(self, p: Pipeline) -> InvokeThread:
        if self._invoker is None or self._invoker.model is not p.model:
            self._discard_inflight()
            if self._invoker is not None:
                self._invoker.close()
            self._invoker = InvokeThread(p.model)
            info = p.model.inputs[0]
            self._staging = [np.zeros(info.shape, dtype=info.dtype) for _ in range(2)]
        return self._invoker

    def _collect_inflight(self) -> tuple[Inflight, Invoked] | None:
        inf = self._inflight
        if inf is None:
            return None
        self._inflight = None
        result = inf.invoker.collect()
        assert result is not None
        return inf, result

    def _conclude_inflight(self, inf: Inflight, res: Invoked) -> None:
        frame = inf.staged.frame
        try:
            if res.error is not None:
                self._model_failed(frame, res.error)
                return
            try:
                outcome = inf.pipeline.finish(inf.staged, res.t1, res.t2, res.raws, res.outs)
            finally:
                # exactly once per fetch: a second release would let the next invoke's fetch
                # overwrite outputs the loop has not read yet
                inf.invoker.release_outputs()
            self._conclude(frame, outcome)
        finally:
            inf.source.release(frame)

    def _complete_inflight(self) -> None:
        """Finish the frame in flight now (its result published): before anything that changes
        the pipeline, serves a command, pauses or stops."""
        done = self._collect_inflight()
        if done is not None:
            self._conclude_inflight(*done)

    def _discard_inflight(self) -> None:
        """The pipeline it ran on is being replaced: its frame is dropped (counted), not concluded."""
        done = self._collect_inflight()
        if done is not None:
            inf, _ = done
            inf.invoker.release_outputs()
            inf.source.release(inf.staged.frame)
            self.stats.dropped += 1

    def _model_failed(self, frame: Frame, err: ModelError) -> None:
        assert self.pipeline is not None
        if err.reason == "inference_restarting":
            self.stats.dropped += 1  # the crash was reported; frames are dropped until the worker is back
            return
        # an isolated worker that crashed or hung has its own event kinds (it is restarted on the next frame)
        kind = "inference_crash" if err.reason == "inference_crash_loop" else err.reason
        self.raise_event(
            kind if kind in ("inference_crash", "inference_hang") else "model_error",
            "error",
            str(err),
            {"source": frame.source, "reason": err.reason, **self._model_detail()},
        )
        if self.pipeline.model.delegate == "edgetpu" and self.accel.failure():
            self._lose_edgetpu(err)
            return
        self._watch_probation(faulty=True)
        self._escalate(self.escalation.fault())

    def _conclude(self, frame: Frame, outcome: Outcome) -> None:
        """What a frame's outcome leads to: a result, an event, the escalation, the watchdog."""
        self.accel.success()
        self._last_inference_at = time.monotonic()
        # a real frame that passes the guard proves as much as the self-test did
        self._selftest_ok = self._selftest_ok or isinstance(outcome, Inference)
        if self._selftest_ok and self.notifier.enabled and not self.notifier.ready_sent:
            self.notifier.ready(self._status_text())  # (outside systemd: never, not built per frame)
        if isinstance(outcome, Skipped):
            # a skipped frame carries the same evidence as a fault: the frame as received, the model
            self.raise_event(outcome.kind, "warning", outcome.message, self._evidence(frame, outcome.detail))
            return
        if isinstance(outcome, Fault):
            self.stats.record(outcome.latency_ms)
            f = outcome.fault
            self.raise_event(f.kind, f.severity, f"{frame.source}: {f.message}", self._evidence(frame, f.detail))
            self._watch_probation(faulty=True)
            self._escalate(self.escalation.fault())
            return
        for w in outcome.warnings:
            self.raise_event(w.kind, w.severity, f"{frame.source}: {w.message}", self._evidence(frame, w.detail))
        self._publish_result(frame, outcome)
        if self._mask_wanted:
            self._publish_mask(frame)
        self._watch_probation(faulty=False)
        self._escalate(self.escalation.good())

    # ---- the Edge TPU: lost, and found again ------------------------------------------------
    def _cpu_model_config(self) -> ModelConfig:
        m = self.cfg.model
        if m.fallback_path:  # the pin names the primary model
            return m.model_copy(
                update={"path": m.fallback_path, "delegate": "cpu", "edgetpu_device": None, "sha256": None}
            )
        return m.model_copy(update={"delegate": "cpu", "edgetpu_device": None})

    def _lose_edgetpu(self, err: ModelError) -> None:
        """Repeated failures on the Edge TPU: carry on with the CPU model, and retry the TPU later."""
        assert self.pipeline is not None
        n, old = self.accel.failures, self.pipeline.model.name
        m = self.cfg.model
        detail: dict[str, Any] = {"failures": n, "reason": err.reason, **self._model_detail()}
        try:
            pipeline = Pipeline.load(self.cfg, self._cpu_model_config(), backend_factory=self._backend_factory)
        except ModelError as cpu_err:
            self.raise_event(
                "delegate_lost",
                "critical",
                f"the Edge TPU failed {n} times in a row (last: {err.reason}) and the CPU model cannot run "
                f"either: {cpu_err}; retrying every {m.retry_interval_s:g} s",
                detail,
            )
            self._set_pipeline(None)  # `_try_load_model` retries the configured model at its interval
            self._next_model_try = time.monotonic() + m.retry_interval_s
            self._set_state("degraded")
            return
        self._set_pipeline(pipeline)
        self._tpu_wanted = True
        self.accel.on_cpu(time.monotonic())
        self.raise_event(
            "delegate_lost",
            "error",
            f"the Edge TPU failed {n} times in a row (last: {err.reason}): switched from {old} to the CPU model "
            f"{pipeline.model.name}; retrying the Edge TPU every {m.edgetpu_retry_s:g} s",
            {**detail, "now": self._model_detail().get("model")},
        )
        self.link.publish_status(self.state)  # the status names the delegate

    def _probe_edgetpu(self, cfg: AgentConfig) -> Pipeline:
        """Runs in a thread: the configured model on the Edge TPU, proven by a self-test."""
        pipeline = Pipeline.load(
            cfg, cfg.model.model_copy(update={"on_delegate_error": "fail"}), backend_factory=self._backend_factory
        )
        try:
            outcome = pipeline.selftest()
        except ModelError:
            pipeline.close()
            raise
        if not isinstance(outcome, Inference):
            pipeline.close()
            why = outcome.fault.message if isinstance(outcome, Fault) else outcome.message
            raise ModelError(f"the self-test on the Edge TPU did not pass: {why}", reason="selftest")
        return pipeline

    def _edgetpu_housekeeping(self, now: float) -> None:
        probe = self._tpu_probe
        if probe is not None:
            if not probe.done():
                return
            self._tpu_probe = None
            try:
                pipeline = probe.result()
            except Exception as err:  # noqa: BLE001 - a failed retry, whatever the cause, must not stop the agent
                self.accel.on_cpu(now)
                log.info("the Edge TPU is still unusable (%s); next try in %g s", err, self.accel.retry_s)
                return
            if probe.tag is not self.cfg or not self._tpu_wanted or self.pipeline is None:
                pipeline.close()  # the config changed meanwhile, or the model is gone: not wanted any more
                return
            self._complete_inflight()
            old = self.pipeline.model.name
            self._set_pipeline(pipeline)
            self._tpu_wanted = False
            self.accel.success()
            self.raise_event(
                "delegate_restored",
                "info",
                f"the Edge TPU works again: switched from the CPU model {old} back to {pipeline.model.name}",
                self._model_detail(),
            )
            self.link.publish_status(self.state)
            return
        if self._tpu_wanted and self.pipeline is not None and self.accel.retry_due(now):
            cfg = self.cfg
            self._tpu_probe = BackgroundBuild(lambda: self._probe_edgetpu(cfg), name="edgetpu-retry", tag=cfg)

    def _set_pipeline(self, pipeline: Pipeline | None) -> None:
        """Replace the running pipeline, stopping the old one's inference worker if it has one."""
        if self._invoker is not None and (pipeline is None or self._invoker.model is not pipeline.model):
            self._discard_inflight()
            self._invoker.close()
            self._invoker = None
        if self.pipeline is not None and self.pipeline is not pipeline:
            self.pipeline.close()
        for notice in pipeline.notices if pipeline is not None and pipeline is not self.pipeline else ():
            self.raise_event(notice.kind, "warning", notice.message, notice.detail)  # once per model adopted
        self.pipeline = pipeline

    def _model_detail(self) -> dict[str, Any]:
        p = self.pipeline
        if p is None:
            return {}
        return {"model": {"name": p.model.name, "sha256": p.model.file.sha256, "delegate": p.model.delegate}}

    def _evidence(self, frame: Frame, detail: dict[str, Any]) -> dict[str, Any]:
        """A fault's detail plus the frame it came from, as received (before preprocessing)."""
        ev: dict[str, Any] = {**detail, "frame": {"seq": frame.seq, "source": frame.source}, **self._model_detail()}
        if frame.pixels is not None:
            lo, hi, _, _ = cv2.minMaxLoc(frame.pixels.reshape(frame.pixels.shape[0], -1))
            ev["frame"]["pixels"] = {"min": lo, "max": hi, "mean": round(float(np.mean(cv2.mean(frame.pixels)[:3])), 3)}
        elif frame.values is not None and frame.values.size <= EVIDENCE_VALUES_MAX:
            ev["frame"]["values"] = [None if not math.isfinite(v) else v for v in frame.values.tolist()]
        elif frame.values is not None:
            v = frame.values
            finite = v[np.isfinite(v)]
            ev["frame"]["values_summary"] = {
                "n": int(v.size),
                "non_finite": int(v.size - finite.size),
                **(
                    {"min": float(finite.min()), "max": float(finite.max()), "mean": round(float(finite.mean()), 6)}
                    if finite.size
                    else {}
                ),
            }
        return ev

    def _escalate(self, step: str | None) -> None:
        if step == "degrade":
            self._set_state("degraded")
        elif step == "recover" and self.source is not None:
            self._set_state("online")
        elif step == "act":
            self._set_state("degraded")
            self._persistent_fault_action()

    def _persistent_fault_action(self) -> None:
        action = self.cfg.guard.on_persistent_fault
        n = self.escalation.faults
        if action == "none" or self.pipeline is None:
            return
        if action == "restart":
            self.raise_event(
                "restart_requested",
                "critical",
                f"{n} consecutive faulty frames: stopping with exit code {EXIT_RESTART} so that the "
                "service manager restarts the agent",
            )
            self.exit_code = EXIT_RESTART
            self._watchdog_off = True  # no more pings: systemd's watchdog backs the request up
            self.stop()
            return
        if action == "fallback" and not self.cfg.model.fallback_path:
            self.raise_event(
                "model_error",
                "error",
                f"{n} consecutive faulty frames, and guard.on_persistent_fault = "
                '"fallback" but model.fallback_path is not set: reloading the model instead',
            )
            action = "reload"
        model_cfg = self.cfg.model
        if action == "fallback":
            assert model_cfg.fallback_path is not None
            model_cfg = model_cfg.model_copy(
                update={"path": model_cfg.fallback_path, "delegate": "cpu", "sha256": None}
            )
        try:
            pipeline = Pipeline.load(self.cfg, model_cfg, backend_factory=self._backend_factory)
        except ModelError as err:
            self.raise_event("model_error", "error", f"{action} after {n} consecutive faulty frames failed: {err}")
            return
        old = self.pipeline.model.name
        self._set_pipeline(pipeline)
        self._tpu_wanted = False  # chosen by the guard, not forced by the accelerator: no retry
        kind = "model_fallback" if action == "fallback" else "model_reloaded"
        self.raise_event(
            kind,
            "warning",
            f"{n} consecutive faulty frames: {'switched from ' + old + ' to the fallback model ' + pipeline.model.name if action == 'fallback' else 'reloaded ' + old + ' in a fresh interpreter'}",
            self._model_detail(),
        )

    def _publish_result(self, frame: Frame, inf: Inference) -> None:
        assert self.pipeline is not None
        model = self.pipeline.model
        topic = self.topics.results
        payload: dict[str, Any] = {
            "seq": 0,
            "ts": round(time.time(), 3),
            "frame": {"seq": frame.seq, "ts": round(frame.ts, 3), "source": frame.source},
            "model": {"name": model.name, "sha256": model.file.sha256},
            "latency_ms": inf.latency_ms,
            "task": self.pipeline.task,
            **inf.fields,
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

    def _publish_stats(self) -> None:
        self._publish_source_counters()
        depth = self.outbox.depth()
        outbox = {
            "depth": depth.count,
            "bytes": depth.bytes,
            "oldest_age_s": depth.oldest_age_s,
            "on_disk": depth.on_disk,
            "in_flight": self.sender.in_flight,
        }
        snap = self.stats.snapshot(
            state=self.state, paused=self.paused, broker_connected=self.link.connected, outbox=outbox
        )
        if self.metrics is not None:  # first: a scrape after the stats message never gets an older one
            self.metrics.update(snap)
        self.link.publish(self.topics.stats, snap, qos=0, retain=True)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._complete_inflight()  # the frame in flight is finished and its result published
        if self._probation is not None:  # the new model stays (it is stored): the kept one goes
            self._probation.old_pipeline.close()
            self._probation = None
        if self._tpu_probe is not None and self._tpu_probe.wait(5.0):
            with contextlib.suppress(Exception):
                self._tpu_probe.result().close()
        for ev in self.events.flush():
            self._publish_event(ev)
        if self._overflowed:
            self._report_overflow()  # kept in the outbox for the next start if the broker is away
        self._publish_stats()
        if self.source is not None:
            self.source.close()
        # what the broker has not acknowledged stays in the outbox for the next start
        self.sender.drain(timeout=3.0)
        self.outbox.close()
        self._set_pipeline(None)
        self.link.stop()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")
