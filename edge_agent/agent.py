"""The daemon: wires the parts (edge_agent/core/) together and runs the loop.

A missing or broken model never ends the process: the agent stays connected with status
`degraded`, raises `model_error`, and retries the file. A broken source is handled the
same way. Only an invalid config (found before this class is built) exits 2.

Each part owns its state: the publisher what goes out, the source supervisor the source, the
model supervisor the pipeline (built off the loop), the lane the frame in flight, the config
controller reloads and updates, the command handler the commands, the watchdog the pings.
The loop takes a frame, runs it through the lane, concludes its outcome, and between two frames
lets each part do its housekeeping.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.commands import Inbox, Request
from edge_agent.config import AgentConfig
from edge_agent.core.commands import CommandHandler
from edge_agent.core.config import ConfigController
from edge_agent.core.evidence import frame_evidence
from edge_agent.core.lane import InferenceLane, OverlapLane, lane_for
from edge_agent.core.lease import Lease
from edge_agent.core.metrics_endpoint import start_metrics
from edge_agent.core.models import ModelSupervisor
from edge_agent.core.publisher import Publisher
from edge_agent.core.sources import Idle, SourceSupervisor
from edge_agent.core.status import Status, compute_state, status_payload, status_text
from edge_agent.core.watchdog import Watchdog
from edge_agent.errors import ModelError
from edge_agent.escalation import Escalation, Step
from edge_agent.events import Severity
from edge_agent.ha_discovery import Discovery
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.topics import Topics
from edge_agent.pipeline import Fault, Inference, Outcome, Pipeline, Skipped
from edge_agent.remote.fetch import remove_partial_downloads
from edge_agent.remote.updater import RemoteUpdates, StartupProblem
from edge_agent.runtime.backends import select_backend
from edge_agent.runtime.worker import BackendFactory
from edge_agent.service import Notifier
from edge_agent.sources.base import Frame, FrameSource
from edge_agent.stats import Stats

if TYPE_CHECKING:
    from edge_agent.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

# EX_TEMPFAIL: the guard asks for a restart; systemd's Restart=on-failure performs it
EXIT_RESTART = 75
IDLE_SLEEP_S = 0.2
TAKE_WAIT_S = 0.05  # the longest the loop waits for a frame before serving the broker and the watchdog


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        config_path: str | None = None,
        backend_factory: BackendFactory | None = None,
        source_factory: Callable[[], FrameSource] | None = None,
    ) -> None:
        # the file config, with the remote update applied before (state_dir/applied.json) on top
        remote = RemoteUpdates(cfg)
        self.cfg, problem = remote.effective()
        self._startup_problems: list[StartupProblem] = [problem] if problem else []
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id)
        self.stats = Stats()
        self.interpreter_name = "none"
        self._stop = threading.Event()
        # the signal that asked for a stop: set by the handler, turned into _stop by the loop
        self._stop_signal: int | None = None
        self._reload_requested = False
        self.exit_code = 0
        self._last_frame_at = 0.0
        self._next_stats = 0.0
        self.notifier = Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.escalation = Escalation.for_guard(self.cfg.guard)
        self.lane: InferenceLane = lane_for(self.cfg.model.overlap, self._conclude)
        self._wire(
            cfg, remote, on_result=on_result, config_path=config_path, backend=backend_factory, frames=source_factory
        )

    def _wire(
        self,
        cfg: AgentConfig,
        remote: RemoteUpdates,
        *,
        on_result: Callable[[dict[str, Any]], None] | None,
        config_path: str | None,
        backend: BackendFactory | None,
        frames: Callable[[], FrameSource] | None,
    ) -> None:
        self.models = ModelSupervisor(
            self.cfg,
            self.raise_event,
            settle=lambda: self.lane.complete(),  # noqa: PLW0108 - the lane is replaced when overlap changes
            on_swap=self._on_swap,
            backend_factory=backend,
        )
        # before the link: its Last Will is built from the status, which publishes through the link
        self.status = Status(lambda state: self.link.publish_status(state))  # noqa: PLW0108
        self.link = MqttLink(cfg.mqtt, self.topics, status_payload=self._status_payload, initial_state="degraded")
        # opened here so that events raised from the start (model_error) are queued too
        state_dir = Path(cfg.device.state_dir)
        outbox = Outbox(state_dir / "outbox.sqlite", max_bytes=int(cfg.mqtt.outbox_max_mb * 1024 * 1024))
        self.publisher = Publisher(self.cfg, self.topics, self.link, outbox, self.stats, on_result=on_result)
        self.inbox = Inbox(answer_busy=self._answer_busy)
        self.sources = SourceSupervisor(
            self.cfg, self.raise_event, on_skipped=self._count_dropped, source_factory=frames
        )
        self.config = ConfigController(
            remote, self.models, self.publisher, self.notifier, self._adopt, config_path=config_path
        )
        self.commands = CommandHandler(
            self.publisher, self.models, self.config, self.sources, on_paused=self._on_paused
        )
        # Home Assistant discovery: published (or cleared) on every connect, from paho's thread
        self.ha = Discovery(cfg.homeassistant, self.topics, state_dir, version=__version__, publish=self.link.publish)
        self.link.on_connected.append(self.ha.on_connected)
        self.metrics: MetricsEndpoint | None = None

    # ---- what the parts share ---------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.status.state

    @property
    def pipeline(self) -> Pipeline | None:
        return self.models.pipeline

    @property
    def paused(self) -> bool:
        return self.commands.paused

    def raise_event(self, kind: str, severity: Severity, message: str, detail: dict[str, Any] | None = None) -> None:
        self.publisher.raise_event(kind, severity, message, detail)

    def _status_payload(self, state: str) -> dict[str, Any]:
        # the link asks for the Last Will's payload while it is built, before the command handler
        commands = getattr(self, "commands", None)
        paused = commands is not None and commands.paused
        return status_payload(
            state, self.status.since, self.models.pipeline, self.cfg, interpreter=self.interpreter_name, paused=paused
        )

    def _refresh_status(self) -> bool:
        """Publish the status if the parts' states changed it; returns whether it did."""
        return self.status.update(
            compute_state(
                model_loaded=self.models.pipeline is not None,
                source_open=self.sources.is_open,
                faulty=self.escalation.degraded,
            )
        )

    def _on_swap(self, old: Pipeline | None, new: Pipeline | None) -> None:
        """The model supervisor replaces the pipeline: the lane lets go of the old one first."""
        if old is not None:
            self._count_dropped(self.lane.retire(old))
        for notice in new.notices if new is not None else ():
            self.raise_event(notice.kind, "warning", notice.message, notice.detail)  # once per model adopted
        if self._stop.is_set():
            return  # the stop closes the model: the next status says offline
        if not self._refresh_status():
            self.link.publish_status(self.status.state)  # the status names the model and delegate

    def _on_paused(self, paused: bool) -> None:
        self.link.publish_status(self.status.state)
        self._next_stats = 0.0  # the stats say so at once too

    def _count_dropped(self, n: int) -> None:
        self.stats.dropped += n

    def _answer_busy(self, req: Request) -> None:
        """A request the full inbox cannot take (called from paho's thread: it only publishes)."""
        self.publisher.answer_busy(req, self.inbox.waiting())

    def _adopt(self, new: AgentConfig, pipeline: Pipeline | None, keep_old: bool) -> None:
        """Make `new` the running config, with its pipeline built beforehand (between two frames)."""
        self.lane.complete()
        self.sources.adopt(new)
        self.models.adopt(new, pipeline, close_old=not keep_old)
        if pipeline is None:
            self.models.retry_now()
        self.publisher.adopt(new)
        self.cfg = new
        self.escalation = Escalation.for_guard(new.guard)
        if new.model.overlap != isinstance(self.lane, OverlapLane):
            self.lane.close()
            self.lane = lane_for(new.model.overlap, self._conclude)
        logging.getLogger().setLevel(getattr(logging, new.service.log_level.upper(), logging.INFO))
        self.link.publish_status(self.status.state)  # the status names the model

    # ---- the loop -----------------------------------------------------------------------
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
        remove_partial_downloads(self.config.remote.model_dir)
        for problem in self._startup_problems:
            self.raise_event(problem.kind, "error", problem.message, {"version": self.config.remote.version})
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._shutdown()
        return self.exit_code

    def _subscribe(self) -> None:
        t = self.topics
        # a retained command would act at every start and reconnect: ignored (see MqttLink.subscribe)
        self.link.subscribe(f"{t.prefix}/{t.device}/cmd/+", self.inbox.on_cmd, self.inbox.reject, accept_retained=False)
        for topic in (t.config_set(), *(t.group_config_set(g) for g in self.cfg.device.groups)):
            self.link.subscribe(topic, self.inbox.on_config, self.inbox.reject)

    def _start_metrics(self) -> None:
        self.metrics = start_metrics(self.cfg, self.raise_event)

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
            self._reload_requested = False
            self.config.reload("SIGHUP")
        self._housekeeping(now)
        for req in self.inbox.drain():
            self.lane.complete()  # commands and updates act between two frames, none in flight
            self.commands.serve(req)
        self._refresh_status()
        if self.paused or not self.models.ready or not self.sources.flowing:
            self.lane.complete()
            self.commands.cancel_pending("no frames are flowing (paused, finished or degraded)")
            self._idle(IDLE_SLEEP_S)
            return
        self._next_frame()

    def _housekeeping(self, now: float) -> None:
        """Between two frames, each part in turn."""
        self.sources.housekeeping(now, self.models.pipeline)
        self.models.housekeeping(now)
        self.publisher.housekeeping(now, self.config.state)
        self.ha.poll()
        self._watchdog(now)
        self.config.housekeeping()
        # the first stats (and systemd's STATUS) once the first model load has said how it went
        if now >= self._next_stats and not self.models.starting:
            self._publish_stats()
            self.notifier.status(self._status_text())
            self._next_stats = now + self.cfg.service.stats_interval_s

    def _next_frame(self) -> None:
        paced_from = self._last_frame_at
        self._pace()
        if not self.models.ready:
            return  # the frame in flight, concluded while pacing, made the model go (the Edge TPU lost)
        # with a frame in flight, only a frame ready now is prepared alongside; else its result goes out first
        got = self.sources.take(0.0 if self.lane.busy else TAKE_WAIT_S)
        if isinstance(got, Idle):
            if got.exhausted:
                self.lane.complete()
                if self.cfg.source.exit_when_done:
                    self.stop()
            elif not got.problem:
                # no frame was taken: the next one is not held back by the frame pacing
                self._last_frame_at = paced_from
                if self.lane.busy:
                    self.lane.complete()
                else:
                    self.sources.check_stall(time.monotonic())
            return
        self._handle(got)

    def _pace(self) -> None:
        fps = self.cfg.source.fps
        if fps:
            wait = self._last_frame_at + 1.0 / fps - time.monotonic()
            if wait > 0:
                # the frame in flight is concluded first: its result must not wait for the next
                # frame's slot (there is time to spare, so nothing is gained by overlapping)
                self.lane.complete()
                wait = self._last_frame_at + 1.0 / fps - time.monotonic()
                if wait > 0:
                    self._idle(wait)
        self._last_frame_at = time.monotonic()

    def _idle(self, seconds: float) -> None:
        """Wait (for the frame pacing, or while degraded) while still draining the outbox, so a
        backlog is not held to the frame rate."""
        deadline = time.monotonic() + seconds
        while not self._stop_if_signalled() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            handed = self.publisher.pump_if_waiting()
            self._watchdog(time.monotonic())
            self._stop.wait(min(left, 0.002 if handed else 0.02))

    def _watchdog(self, now: float) -> None:
        s = self.sources
        idle_by_design = self.paused or s.done or not self.models.ready or not s.is_open or s.waiting
        self.watchdog.tick(now, fps=self.cfg.source.fps, idle_by_design=idle_by_design)

    def _handle(self, lease: Lease) -> None:
        pipeline = self.models.pipeline
        assert pipeline is not None
        self.stats.frames += 1
        if self.commands.snapshot_wanted:
            self.commands.take_snapshot(lease.frame, self.cfg.service.snapshot_max_kb)
        self.lane.run(lease, pipeline)  # which gives the frame back to the source once done with it

    # ---- what a frame's outcome leads to ------------------------------------------------------
    def _conclude(self, frame: Frame, pipeline: Pipeline, outcome: Outcome | ModelError) -> None:
        """A result, an event, the escalation, the watchdog."""
        if isinstance(outcome, ModelError):
            self._model_failed(frame, outcome)
            return
        self.models.inference_ok()
        self.watchdog.inferred(time.monotonic())
        # a real frame that passes the guard proves as much as the self-test did
        self.models.selftest_ok = self.models.selftest_ok or isinstance(outcome, Inference)
        if self.models.selftest_ok and self.notifier.enabled and not self.notifier.ready_sent:
            self.notifier.ready(self._status_text())  # (outside systemd: never, not built per frame)
        if isinstance(outcome, Skipped):
            # a skipped frame carries the same evidence as a fault: the frame as received, the model
            self.raise_event(outcome.kind, "warning", outcome.message, self._evidence(frame, outcome.detail))
            return
        if isinstance(outcome, Fault):
            self.stats.record(outcome.latency_ms)
            f = outcome.fault
            self.raise_event(f.kind, f.severity, f"{frame.source}: {f.message}", self._evidence(frame, f.detail))
            self.config.watch(faulty=True)
            self._escalate(self.escalation.fault())
            return
        for w in outcome.warnings:
            self.raise_event(w.kind, w.severity, f"{frame.source}: {w.message}", self._evidence(frame, w.detail))
        self.publisher.publish_result(frame, outcome, pipeline)
        if self.commands.mask_wanted:
            self.commands.publish_mask(frame)
        self.config.watch(faulty=False)
        self._escalate(self.escalation.good())

    def _model_failed(self, frame: Frame, err: ModelError) -> None:
        if err.reason == "inference_restarting":
            self.stats.dropped += 1  # the crash was reported; frames are dropped until the worker is back
            return
        # an isolated worker that crashed or hung has its own event kinds (it is restarted on the next frame)
        kind = "inference_crash" if err.reason == "inference_crash_loop" else err.reason
        self.raise_event(
            kind if kind in ("inference_crash", "inference_hang") else "model_error",
            "error",
            str(err),
            {"source": frame.source, "reason": err.reason, **self.models.detail()},
        )
        if self.models.inference_failed(err):
            return  # the Edge TPU was left for the CPU model: the accelerator's fault, not the model's
        self.config.watch(faulty=True)
        self._escalate(self.escalation.fault())

    def _evidence(self, frame: Frame, detail: dict[str, Any]) -> dict[str, Any]:
        """A fault's detail plus the frame it came from, as received (before preprocessing)."""
        return {**detail, "frame": frame_evidence(frame), **self.models.detail()}

    def _escalate(self, step: Step) -> None:
        if step is not None:
            self._refresh_status()  # degraded at once, online again at once
        if step != "act":
            return
        action = self.cfg.guard.on_persistent_fault
        n = self.escalation.faults
        if action == "none" or self.models.pipeline is None:
            return
        if action == "restart":
            self.raise_event(
                "restart_requested",
                "critical",
                f"{n} consecutive faulty frames: stopping with exit code {EXIT_RESTART} so that the "
                "service manager restarts the agent",
            )
            self.exit_code = EXIT_RESTART
            self.watchdog.off = True  # no more pings: systemd's watchdog backs the request up
            self.stop()
            return
        self.models.renew(action, n)
        if self.models.holding and self.models.pipeline is not None:
            # the faulty model's frame in flight is dropped, as every frame is until the new one is in
            self._count_dropped(self.lane.retire(self.models.pipeline))

    # ---- stats and the stop -----------------------------------------------------------------
    def _status_text(self) -> str:
        depth = self.publisher.outbox.depth().count
        return status_text(self.state, self.models.pipeline, self.stats, self.link.connected, depth)

    def _publish_stats(self) -> None:
        self.sources.publish_counters()
        self.publisher.publish_stats(state=self.state, paused=self.paused, metrics=self.metrics)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.lane.close()  # the frame in flight is finished and its result published
        self.commands.cancel_pending("the agent is stopping")
        self.config.close()
        self.publisher.flush()
        self._publish_stats()
        self.sources.close()
        self.publisher.close()
        self.models.close()
        self.link.stop()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")
