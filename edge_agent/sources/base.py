"""What every frame source delivers, and the small interface each source meets."""

from __future__ import annotations

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
    ts: float  # wall clock, seconds since the epoch
    mono: float  # time.monotonic() at capture, for latencies
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


class FrameSource(Protocol):
    """Sources are iterated by the agent: `read()` returns the next frame, a problem with
    one input (the source goes on), or None when a finite source is exhausted.

    Buffers are lent, not given: a frame's `pixels` (or `values`) may live in memory the
    source reuses (a preallocated slot, a camera request's buffer). They stay valid until the
    frame is passed to `release()`, after which the source may overwrite them. A source must
    allow at least `MIN_LENT` frames to be held at once (one being consumed, one waiting,
    one being captured); a caller never holds more. `read()` raises `SourceError` when the
    source is broken beyond one input (`SourceStalledError` when frames stopped coming); the agent
    closes it and reopens it with backoff.
    """

    name: str

    def read(self) -> Frame | SourceProblem | None: ...

    def release(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


MIN_LENT = 3


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
