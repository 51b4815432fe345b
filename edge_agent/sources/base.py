"""What every frame source delivers, and the small interface each source meets."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

PixelOrder = Literal["rgb", "bgr", "gray"]


@dataclass(frozen=True)
class Frame:
    """One image or one sensor row, with where and when it came from.

    `pixels` is H×W×3 (or H×W for gray) uint8 in `order`; `values` is a float64 vector
    with NaN where a sensor value is missing. Exactly one of them is set.
    """

    seq: int
    # wall clock, seconds since the epoch: the capture time of a camera's or a stream's frame; for
    # files, folders, CSV rows, WAV windows and topics, the moment the agent took it (CaptureThread)
    ts: float
    mono: float  # time.monotonic() at the same moment, for latencies
    source: str
    pixels: npt.NDArray[np.uint8] | None = None
    order: PixelOrder = "bgr"
    values: npt.NDArray[np.float64] | None = None
    names: tuple[str, ...] = field(default=())

    @property
    def is_vector(self) -> bool:
        return self.values is not None


@dataclass(frozen=True)
class SourceProblem:
    """A frame or row the source could not use; the agent turns it into a `source_error` event."""

    source: str
    message: str


@dataclass(frozen=True)
class NoFrameYet:
    """Nothing to give right now, but the source is not exhausted: a watched folder with no
    new file, a topic with no new message. Use the `NO_FRAME_YET` instance."""


NO_FRAME_YET = NoFrameYet()


class FrameSource(Protocol):
    """Sources are iterated by the agent: `read()` returns the next frame, a problem with
    one input (the source goes on), `NO_FRAME_YET` when an open-ended source has nothing new
    at the moment, or None when a finite source is exhausted.

    A source that waits for input (a watched folder, an MQTT topic) blocks in `read()` for at
    most `MAX_WAIT_S` before answering `NO_FRAME_YET`, and never answers it without such a short
    wait when nothing is coming: the capture thread calls `read()` again at once (no spinning),
    and the answers show that the source is idle by design, not hung (the watchdog goes on).

    Buffers are lent, not given: a frame's `pixels` (or `values`) may live in memory the
    source reuses (a preallocated slot, a camera request's buffer). They stay valid until the
    frame is passed to `release()`, after which the source may overwrite them. A source must
    allow at least `MIN_LENT` frames to be held at once (one being consumed, one waiting,
    one being captured); a caller never holds more. `read()` raises `SourceError` when the
    source is broken beyond one input (`SourceStalledError` when frames stopped coming); the agent
    closes it and reopens it with backoff.
    """

    name: str

    def read(self) -> Frame | SourceProblem | NoFrameYet | None: ...

    def release(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


MIN_LENT = 3
# the longest a source's `read()` may block while it has nothing to give (see FrameSource)
MAX_WAIT_S = 0.1


class Stamp:
    """Sequence numbers and timestamps shared by every source."""

    def __init__(self) -> None:
        self._seq = 0

    def next(self) -> tuple[int, float, float]:
        self._seq += 1
        return self._seq, time.time(), time.monotonic()


def frame_from_pixels(stamp: Stamp, source: str, pixels: npt.NDArray[Any], order: PixelOrder) -> Frame:
    seq, ts, mono = stamp.next()
    return Frame(seq=seq, ts=ts, mono=mono, source=source, pixels=pixels, order=order)


class SlotPool:
    """Preallocated frame buffers, lent to frames and given back by `release()`.

    Sized for the most frames a caller may hold (MIN_LENT) plus the one being filled, so steady
    state allocates nothing. A caller that holds more than it may gets a new buffer (counted in
    `grown`) rather than a lent one overwritten under it. Thread-safe: the capture thread
    acquires, the consumer gives back.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.uint8, count: int = MIN_LENT + 1) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self._free = [np.zeros(shape, dtype=self.dtype) for _ in range(count)]
        self._lent: dict[int, npt.NDArray[Any]] = {}
        self._lock = threading.Lock()
        self.grown = 0

    def acquire(self) -> npt.NDArray[Any]:
        with self._lock:
            if self._free:
                buf = self._free.pop()
            else:
                buf = np.zeros(self.shape, dtype=self.dtype)
                self.grown += 1
            self._lent[id(buf)] = buf
            return buf

    def give_back(self, arr: npt.NDArray[Any] | None) -> None:
        """Return the buffer `arr` is (or is a view of); anything else is ignored."""
        with self._lock:
            while arr is not None:
                buf = self._lent.pop(id(arr), None)
                if buf is not None:
                    self._free.append(buf)
                    return
                base = arr.base
                arr = base if isinstance(base, np.ndarray) else None

    @property
    def lent(self) -> int:
        with self._lock:
            return len(self._lent)
