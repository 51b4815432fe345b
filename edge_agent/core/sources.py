"""The source supervisor: opens the configured source with backoff, hands its items to the loop,
notices a stall, drops a broken source and reopens it later. A source that fails never ends
the agent: it is reported (`source_error`, `source_stalled`) and retried, doubling the wait up
to `source.reconnect_max_s`; a frame that arrives resets the wait."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.core.lease import Lease
from edge_agent.core.retry import Backoff, RetrySchedule
from edge_agent.errors import SourceError, SourceStalledError
from edge_agent.events import Severity
from edge_agent.pipeline import Pipeline
from edge_agent.sources import SourceProblem, open_source
from edge_agent.sources.base import Frame, FrameSource
from edge_agent.sources.capture import NOTHING, CaptureThread

log = logging.getLogger("edge_agent.agent")

SOURCE_RETRY_MIN_S = 0.5
# sources configured from the model's input: opened after the model
MODEL_SHAPED_SOURCES = ("wav", "picamera2")

RaiseEvent = Callable[..., None]


def feature_names(cfg: AgentConfig) -> tuple[str, ...]:
    return tuple(f.name for f in cfg.preprocess.features) if cfg.preprocess else ()


def source_changed(old: AgentConfig, new: AgentConfig) -> bool:
    """Whether a new config must reopen the source: its section, or what it was opened with."""
    return (
        new.source != old.source
        or feature_names(new) != feature_names(old)
        or (new.source.kind == "mqtt" and (new.mqtt != old.mqtt or new.device.id != old.device.id))
    )


@dataclass(frozen=True)
class Idle:
    """No frame now: nothing came within the wait, a finite source ended (`exhausted`), or an
    input could not be used (`problem`: reported already)."""

    exhausted: bool = False
    problem: bool = False


WAITING = Idle()
EXHAUSTED = Idle(exhausted=True)
PROBLEM = Idle(problem=True)


class SourceSupervisor:
    def __init__(
        self,
        cfg: AgentConfig,
        raise_event: RaiseEvent,
        *,
        on_skipped: Callable[[int], None],
        source_factory: Callable[[], FrameSource] | None = None,
    ) -> None:
        self.cfg = cfg
        self._raise = raise_event
        self._on_skipped = on_skipped  # frames a live source replaced before they were taken
        self._factory = source_factory  # benchmarks feed frames decoded beforehand
        self.capture: CaptureThread | None = None
        self.done = False  # a finite source is exhausted
        self.frames_read = 0
        self.stall_after_s: float | None = None
        self._retry = RetrySchedule(Backoff(SOURCE_RETRY_MIN_S, max(cfg.source.reconnect_max_s, SOURCE_RETRY_MIN_S)))

    @property
    def is_open(self) -> bool:
        return self.capture is not None

    @property
    def flowing(self) -> bool:
        """Open, not exhausted: a snapshot or a mask can be taken from the next frame."""
        return self.capture is not None and not self.done

    @property
    def waiting(self) -> bool:
        """A watched folder or a topic with nothing new: its read() answers, it is not hung."""
        return self.capture is not None and self.capture.waiting

    # ---- open, drop, reopen ---------------------------------------------------------------
    def housekeeping(self, now: float, pipeline: Pipeline | None) -> None:
        if self.capture is None and self._retry.due(now):
            self._open(pipeline)

    def _open(self, p: Pipeline | None) -> None:
        cfg = self.cfg
        if p is None and cfg.source.kind in MODEL_SHAPED_SOURCES:
            return  # opened once the model says its input size (the camera's stream, the audio window)
        try:
            src = self._factory() if self._factory is not None else self._open_configured(p)
        except SourceError as err:
            delay = self._retry.failed(time.monotonic())
            self._raise("source_error", "error", f"{err} (retrying in {delay:g} s)")
            return
        # live sources (cameras, streams): the newest frame wins; files, rows, topics: every item counts
        live = bool(getattr(src, "live", False))
        self.capture = CaptureThread(src, "latest" if live else "every")
        self.stall_after_s = cfg.source.stall_after_s or getattr(src, "stall_after_s", None)
        log.info("source %s opened (%s)", src.name, "live: the newest frame wins" if live else "every item")

    def _open_configured(self, p: Pipeline | None) -> FrameSource:
        cfg = self.cfg
        shape = tuple(p.model.inputs[0].shape) if p is not None else ()
        t = p.pre.transform if p is not None and not p.pre.vector else None
        return open_source(
            cfg.source,
            feature_names=feature_names(cfg),
            input_length=int(np.prod(shape)) if shape else None,
            # an image input [1, H, W, C]: a camera can deliver that size and pixel order itself
            model_size=(int(shape[2]), int(shape[1])) if t is not None and len(shape) == 4 else None,
            model_order=t.color if t is not None and t.color in ("rgb", "bgr", "gray") else None,  # type: ignore[arg-type]
            model_resize=t.resize if t is not None else None,  # type: ignore[arg-type]
            broker=cfg.mqtt,
            device_id=cfg.device.id,
        )

    def drop(self, kind: str, message: str, severity: Severity = "error") -> None:
        """Report, close, and reopen after the backoff."""
        assert self.capture is not None
        name = self.capture.name
        self.publish_counters()
        self.capture.close()  # up to JOIN_S for a read() that blocks: the wait counts from after it
        self.capture = None
        delay = self._retry.failed(time.monotonic())
        self._raise(kind, severity, f"{message} (reopening in {delay:g} s)", {"source": name})

    def check_stall(self, now: float) -> None:
        """No frame for stall_after_s from a live source (a camera whose read() blocks for good, a
        stream gone silent): say so, close it, reopen it. The watchdog pings have stopped already."""
        if self.capture is None or not self.stall_after_s:
            return
        quiet = now - self.capture.last_frame_mono
        if quiet >= self.stall_after_s:
            self.drop("source_stalled", f"{self.capture.name}: no frame for {quiet:.1f} s (source.stall_after_s)")

    def adopt(self, new: AgentConfig) -> None:
        """A new running config: the source is reopened when what it was opened with changed."""
        old, self.cfg = self.cfg, new
        if self.capture is not None and source_changed(old, new):
            self.capture.close()
            self.capture = None
            self.done = False
            self._retry = RetrySchedule(
                Backoff(SOURCE_RETRY_MIN_S, max(new.source.reconnect_max_s, SOURCE_RETRY_MIN_S))
            )

    def publish_counters(self) -> None:
        """Frames a live source skipped (a newer one arrived first) go into the stats totals."""
        if self.capture is not None and self.capture.skipped:
            self._on_skipped(self.capture.skipped)
            self.capture.skipped = 0

    # ---- items ------------------------------------------------------------------------------
    def take(self, wait: float) -> Lease | Idle:
        """The next frame on a lease, or why there is none. Problems with one input are raised as
        `source_error` events here; a source broken beyond one input is dropped and reopened."""
        cap = self.capture
        if cap is None or self.done:
            return WAITING
        limit = self.cfg.source.max_frames
        try:
            item = None if limit is not None and self.frames_read >= limit else cap.take(wait)
        except SourceError as err:
            # e.g. a looping CSV whose file vanished, a frozen camera: report, drop the source, reopen later
            self.drop("source_stalled" if isinstance(err, SourceStalledError) else "source_error", str(err))
            return WAITING
        if item is NOTHING:
            return WAITING
        if item is None:
            self.done = True
            log.info("source %s exhausted", cap.name)
            return EXHAUSTED
        self.frames_read += 1
        if isinstance(item, SourceProblem):
            self._raise("source_error", "warning", f"{item.source}: {item.message}", {"source": item.source})
            return PROBLEM
        assert isinstance(item, Frame)
        # frames flow again: the next failure is retried quickly
        self._retry.succeeded()
        return Lease(item, cap.release)

    def close(self) -> None:
        if self.capture is not None:
            self.publish_counters()
            self.capture.close()
            self.capture = None
