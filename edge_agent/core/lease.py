"""A frame on a lease: taken from its source, given back exactly once.

Sources lend their buffers (a camera request's memory, a preallocated slot) until the frame is
released. A release forgotten pins a camera buffer; a release done twice hands a buffer back
that the source may already have lent again. So the loop takes each frame as a `Lease`, and the
lease gives it back once: a second release raises, as picamera2's `CompletedRequest.release()`
refuses a request released already.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.sources.base import Frame


class LeaseError(RuntimeError):
    """A lease released twice: a bug in the loop, never an input's fault."""


class Lease:
    __slots__ = ("_give_back", "_released", "frame")

    def __init__(self, frame: Frame, give_back: Callable[[Frame], None]) -> None:
        self.frame = frame
        self._give_back = give_back
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            raise LeaseError(f"frame {self.frame.seq} from {self.frame.source} was released twice")
        self._released = True
        self._give_back(self.frame)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        if not self._released:
            self.release()
