"""Capture in its own thread, so that a source that blocks (a camera waiting for its next frame,
a stream that went silent, a folder waiting for its next file) never blocks the agent's loop.

Two policies, by the kind of source:
- "latest" for live sources (cameras, streams): the thread reads as fast as the
  source delivers and keeps only the newest frame; a frame replaced before the consumer took it
  is released at once and counted in `skipped`. The consumer always gets the freshest frame.
- "every" for sources whose every item matters (files, folders, CSV rows, MQTT sensor rows, which
  the `mqtt` source queues itself with a bound): the thread reads one
  item ahead and waits until it is taken, so decoding the next file overlaps inference of the
  current one and nothing is skipped. The frame's `ts` and `mono` are then the moment it is
  taken (read ahead is not capture); a live source's are its capture time.

Problems with one input (`SourceProblem`) are passed on in order, never replaced. A
`SourceError` raised by the source ends the thread and is raised by `take()`; so is an
unexpected exception (a bug in a source must not fail silently). `last_frame_mono` tells the
agent when the last frame arrived, to notice a stall. An open-ended source (a watched folder, a
topic) answers `NO_FRAME_YET` after a short wait when it has nothing new; `waiting` tells the
agent's watchdog that such a source is idle by design, not hung.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Literal

from edge_agent.errors import SourceError
from edge_agent.sources.base import MAX_WAIT_S, Frame, FrameSource, NoFrameYet, SourceProblem

Policy = Literal["latest", "every"]
MAX_PROBLEMS = 256  # a flood of bad inputs is counted, not queued without bound
JOIN_S = 2.0
# a NO_FRAME_YET answer older than this no longer shows the source is alive (it answers every MAX_WAIT_S)
WAITING_FRESH_S = 10 * MAX_WAIT_S


class Nothing:
    """No item within the wait: the loop goes on with other work and asks again."""

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING = Nothing()


class CaptureThread:
    def __init__(self, source: FrameSource, policy: Policy) -> None:
        self.source = source
        self.policy = policy
        self.skipped = 0  # frames replaced by newer ones before they were taken ("latest")
        self.problems_dropped = 0
        self.last_frame_mono = time.monotonic()  # the start counts, so a source that never delivers stalls too
        # when an open-ended source last answered NO_FRAME_YET (-inf: never, or a frame came since)
        self._waiting_mono = -math.inf
        self._cond = threading.Condition()
        self._ready: Frame | None = None
        self._problems: deque[SourceProblem] = deque()
        self._error: SourceError | None = None
        self._ended = False
        self._closing = False
        self._source_closed = False
        self._exited = False  # the thread has left _run
        self._abandoned = False  # close() gave up waiting for the thread, which closes the source itself
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.source.name

    # ---- the capture side -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                try:
                    item = self.source.read()
                except SourceError as err:
                    self._finish(error=err)
                    return
                except Exception as err:  # noqa: BLE001 - reported as the source's failure
                    first = str(err).splitlines()[0] if str(err) else ""
                    self._finish(error=SourceError(f"{self.source.name} failed: {type(err).__name__}: {first}"))
                    return
                if item is None:
                    self._finish()
                    return
                if isinstance(item, NoFrameYet):
                    # the source waited up to MAX_WAIT_S itself: ask again, and note that it answers
                    self._waiting_mono = time.monotonic()
                    continue
                self._waiting_mono = -math.inf
                self._offer(item)
                # no reference of this thread's may outlive the frame's release: a camera cannot
                # unmap a buffer that a view still points into
                del item
        finally:
            with self._cond:
                self._exited = True
                abandoned = self._abandoned
            if abandoned:
                self._close_source()  # close() gave up waiting for a blocked read(): the thread closes it

    def _offer(self, item: Frame | SourceProblem) -> None:
        with self._cond:
            if self._closing:  # read while close() was waiting: nobody will take it
                if isinstance(item, Frame):
                    self.source.release(item)
                return
            if self.policy == "every":
                # one item ahead at most: wait until the previous frame is taken; a problem waits
                # too, else it would be taken before the frame read ahead of it
                while self._ready is not None and not self._closing:
                    self._cond.wait(0.1)
                if self._closed_meanwhile():
                    if isinstance(item, Frame):
                        self.source.release(item)
                    return
            if isinstance(item, SourceProblem):
                if len(self._problems) >= MAX_PROBLEMS:
                    self.problems_dropped += 1
                else:
                    self._problems.append(item)
            else:
                if self.policy == "latest" and self._ready is not None:
                    self.source.release(self._ready)
                    self.skipped += 1
                self._ready = item
                self.last_frame_mono = time.monotonic()
            self._cond.notify_all()

    def _closed_meanwhile(self) -> bool:
        """`_closing`, read again after a wait (close() sets it from the consumer's thread)."""
        return self._closing

    def _finish(self, error: SourceError | None = None) -> None:
        with self._cond:
            # the traceback would keep this thread's frame alive, and with it the last frame read
            self._error = error.with_traceback(None) if error is not None else None
            self._ended = True
            self._cond.notify_all()

    # ---- the consumer side ----------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """The source answers, with nothing new: a watched folder or a topic idle by design (not
        a read() that hangs, which stops answering)."""
        return time.monotonic() - self._waiting_mono < WAITING_FRESH_S

    def take(self, timeout: float) -> Frame | SourceProblem | Nothing | None:
        """The next item: a problem (in order), the newest frame, or NOTHING if none came within
        `timeout`; None once the source is exhausted. Raises the source's SourceError."""
        with self._cond:
            self._cond.wait_for(lambda: self._problems or self._ready is not None or self._ended, timeout)
            if self._problems:
                return self._problems.popleft()
            if self._ready is not None:
                frame, self._ready = self._ready, None
                self._cond.notify_all()
                if self.policy == "every":
                    # read ahead is not capture: a file's, a row's or a message's time is when the
                    # agent takes it, else its latency would count the wait behind the frame before
                    frame = replace(frame, ts=time.time(), mono=time.monotonic())
                return frame
            if self._error is not None:
                raise self._error
            return None if self._ended else NOTHING

    def release(self, frame: Frame) -> None:
        self.source.release(frame)

    def close(self) -> None:
        """Stop the thread and close the source. A read() that does not return within JOIN_S is
        left to the thread, which closes the source when it does."""
        with self._cond:
            self._closing = True
            # released, and no reference kept, under the lock: the thread may be about to close the
            # source, and a camera cannot unmap a buffer that a view still points into
            if self._ready is not None:
                self.source.release(self._ready)
                self._ready = None
            self._cond.notify_all()
        self._thread.join(JOIN_S)
        with self._cond:
            # only one side closes the source: this one, unless the thread is still in a read()
            close_now = self._exited
            self._abandoned = not close_now
        if close_now:
            self._close_source()

    def _close_source(self) -> None:
        with self._cond:
            if self._source_closed:
                return
            self._source_closed = True
        self.source.close()
