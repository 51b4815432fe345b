"""The inference lane: a frame on its lease in, its outcome out, by one of two strategies.

- `InlineLane`: preprocess, invoke and conclude the frame before the next is taken.
- `OverlapLane`: invoke() in a thread of its own (it releases the GIL), so frame N+1 is taken
  and prepared into a staging buffer, and N's result concluded, while N is inferred.

Either way every frame's lease is released exactly once, after its outcome was concluded (or
when it is discarded because the pipeline it ran on is being replaced), and the conclusion gets
the pipeline that produced the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.core.lease import Lease
from edge_agent.errors import ModelError
from edge_agent.overlap import Inflight, Invoked, InvokeThread
from edge_agent.pipeline import Outcome, Pipeline, Staged
from edge_agent.sources.base import Frame

# what the loop does with one frame's outcome (or the error its model raised)
Conclude = Callable[[Frame, Pipeline, "Outcome | ModelError"], None]


class InferenceLane(Protocol):
    @property
    def busy(self) -> bool:
        """A frame is in flight."""

    def run(self, lease: Lease, pipeline: Pipeline) -> None:
        """Take the frame through `pipeline`; its outcome is concluded now or with the next run."""

    def complete(self) -> None:
        """Conclude the frame in flight now: before anything that changes the pipeline, serves a
        command, pauses or stops."""

    def retire(self, pipeline: Pipeline) -> int:
        """`pipeline` is being replaced: its frame in flight is dropped (returns how many, 0 or
        1) and whatever the lane holds of it (an invoke thread) let go, so it can be closed."""

    def close(self) -> None: ...


class InlineLane:
    def __init__(self, conclude: Conclude) -> None:
        self._conclude = conclude

    @property
    def busy(self) -> bool:
        return False

    def run(self, lease: Lease, pipeline: Pipeline) -> None:
        with lease:
            frame = lease.frame
            try:
                outcome: Outcome | ModelError = pipeline.process(frame)
            except ModelError as err:
                outcome = err
            self._conclude(frame, pipeline, outcome)

    def complete(self) -> None:
        pass

    def retire(self, pipeline: Pipeline) -> int:
        return 0

    def close(self) -> None:
        pass


class OverlapLane:
    def __init__(self, conclude: Conclude) -> None:
        self._conclude = conclude
        self._inflight: Inflight | None = None
        self._invoker: InvokeThread | None = None
        self._staging: list[npt.NDArray[Any]] = []
        self._staging_next = 0

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def run(self, lease: Lease, pipeline: Pipeline) -> None:
        """Stage frame N+1 while N is in invoke(); then start N+1 and conclude N meanwhile."""
        invoker = self._invoker_for(pipeline)
        buf = self._staging[self._staging_next]
        self._staging_next ^= 1
        # the frame's geometry and checks travel in `staged`: N's decode (below, or with the next
        # run) reads its own, whatever N+1 is
        staged = pipeline.stage(lease.frame, lambda: buf)
        done = self._collect()
        if isinstance(staged, Staged):
            view = pipeline.model.input_view(0)()
            np.copyto(view, buf)
            del view  # the interpreter refuses to invoke while a view of its memory is alive
            invoker.submit()
            self._inflight = Inflight(staged, pipeline, invoker, lease)
        if done is not None:
            self._finish(*done)
        if not isinstance(staged, Staged):
            with lease:
                self._conclude(lease.frame, pipeline, staged)

    def _invoker_for(self, p: Pipeline) -> InvokeThread:
        if self._invoker is None or self._invoker.model is not p.model:
            if self._invoker is not None:
                self._drop_inflight()
                self._invoker.close()
            self._invoker = InvokeThread(p.model)
            info = p.model.inputs[0]
            self._staging = [np.zeros(info.shape, dtype=info.dtype) for _ in range(2)]
        return self._invoker

    def _collect(self) -> tuple[Inflight, Invoked] | None:
        inf = self._inflight
        if inf is None:
            return None
        self._inflight = None
        result = inf.invoker.collect()
        assert result is not None
        return inf, result

    def _finish(self, inf: Inflight, res: Invoked) -> None:
        with inf.lease:
            frame = inf.staged.frame
            if res.error is not None:
                self._conclude(frame, inf.pipeline, res.error)
                return
            try:
                outcome = inf.pipeline.finish(inf.staged, res.t1, res.t2, res.raws, res.outs)
            finally:
                # exactly once per fetch: a second release would let the next invoke's fetch
                # overwrite outputs the loop has not read yet
                inf.invoker.release_outputs()
            self._conclude(frame, inf.pipeline, outcome)

    def complete(self) -> None:
        done = self._collect()
        if done is not None:
            self._finish(*done)

    def _drop_inflight(self) -> int:
        done = self._collect()
        if done is None:
            return 0
        inf, res = done
        if res.error is None:
            inf.invoker.release_outputs()
        inf.lease.release()
        return 1

    def retire(self, pipeline: Pipeline) -> int:
        if self._invoker is None or self._invoker.model is not pipeline.model:
            return 0
        dropped = self._drop_inflight()
        self._invoker.close()
        self._invoker = None
        return dropped

    def close(self) -> None:
        self.complete()
        if self._invoker is not None:
            self._invoker.close()
            self._invoker = None


def lane_for(overlap: bool, conclude: Conclude) -> InferenceLane:
    return OverlapLane(conclude) if overlap else InlineLane(conclude)
