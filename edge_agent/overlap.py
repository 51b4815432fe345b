"""invoke() in a thread of its own, so that the next frame is captured and prepared meanwhile.

The interpreter releases the GIL inside invoke(), so while frame N is inferred the agent's loop
prepares frame N+1 into a staging buffer, then publishes N's result while N+1 is inferred. The
input tensor is written only between two invokes (the staging buffer is copied in, one
memcpy), and the outputs of N are fetched by this thread only once the loop has finished with
those of N-1 (`release_outputs`), so the reused output buffers are never read and written at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.core.lease import Lease
from edge_agent.errors import ModelError
from edge_agent.pipeline import Pipeline, Staged
from edge_agent.runtime.model import InferenceModel

# how long submit() waits for the thread to be inside invoke() (it is there within ~0.1 ms; the
# bound only keeps a stalled thread from stalling the loop)
START_WAIT_S = 0.05


@dataclass(frozen=True)
class Invoked:
    """One invoke's outcome: its time span and outputs, or the error it raised."""

    t1: float
    t2: float
    raws: list[npt.NDArray[Any]]
    outs: list[npt.NDArray[np.float32]]
    error: ModelError | None = None


class InvokeThread:
    def __init__(self, model: InferenceModel) -> None:
        self.model = model
        self._go = threading.Event()
        self._done = threading.Event()
        self._started = threading.Event()
        self._outputs_free = threading.Event()
        self._outputs_free.set()
        self._quit = False
        self._result: Invoked | None = None
        self.busy = False  # submitted and not yet collected
        self._thread = threading.Thread(target=self._run, name=f"invoke:{model.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._quit:
                return
            self._started.set()
            t1 = time.monotonic()
            error: ModelError | None = None
            try:
                self.model.invoke()
            except ModelError as err:
                error = err
            except Exception as err:  # noqa: BLE001 - reported as the model's failure, never lost
                error = ModelError(f"invoke() raised {type(err).__name__}: {err}", reason="invoke_failed")
            t2 = time.monotonic()
            raws: list[npt.NDArray[Any]] = []
            outs: list[npt.NDArray[np.float32]] = []
            if error is None:
                self._outputs_free.wait()  # the loop is done with the previous frame's outputs
                if self._quitting():
                    return
                self._outputs_free.clear()
                try:
                    raws, outs = self.model.fetch_outputs()
                except ModelError as err:
                    error = err
                    self._outputs_free.set()
            self._result = Invoked(t1, t2, raws, outs, error)
            self._done.set()

    def _quitting(self) -> bool:
        """`_quit`, read again after a wait (close() sets it from the loop's thread)."""
        return self._quit

    def submit(self) -> None:
        """Start invoke() on what is in the input tensor now; return once it has started.

        Waiting here is what keeps the interpreter busy: this thread needs the GIL to wake up, and
        the loop, which goes on with Python work (the previous frame's result), would hold it
        for ~0.3 ms, about a tenth of a Coral-speed invoke. Blocked here the loop lets go of the
        GIL at once, and this thread is inside invoke() (which releases it) within ~0.1 ms."""
        self.busy = True
        self._done.clear()
        self._started.clear()
        self._go.set()
        self._started.wait(START_WAIT_S)

    def collect(self, timeout: float | None = None) -> Invoked | None:
        """The submitted invoke's outcome (None if not done within timeout)."""
        if not self._done.wait(timeout):
            return None
        self.busy = False
        result, self._result = self._result, None
        assert result is not None
        return result

    def done(self) -> bool:
        return self._done.is_set()

    def release_outputs(self) -> None:
        """The loop has finished reading the outputs: the next invoke may fetch into them."""
        self._outputs_free.set()

    def close(self) -> None:
        self._quit = True
        self._outputs_free.set()
        self._go.set()
        self._thread.join(5.0)


@dataclass(frozen=True)
class Inflight:
    """The frame in invoke(): what it was staged by, run on, and the lease it is held on."""

    staged: Staged
    pipeline: Pipeline
    invoker: InvokeThread
    lease: Lease
