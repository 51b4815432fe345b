"""What the rest of the agent may ask of a loaded model, wherever its interpreter runs.

Two implementations: `loader.LoadedModel` (the interpreter in this process) and
`worker.WorkerModel` (the interpreter in a child process, `[model] isolation = "process"`). The
pipeline, the overlap thread, `check` and the supervisors hold an `InferenceModel` and never reach
into an interpreter: a model in a child process has none here to reach into.

The attributes are read-only here: whoever holds an `InferenceModel` describes and runs the model,
it does not reconfigure it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.backends import Backend
from edge_agent.runtime.loader import ModelFile
from edge_agent.runtime.tensors import TensorInfo


@runtime_checkable
class InferenceModel(Protocol):
    """A model ready for `invoke()`: its description, its input and output memory, its life."""

    @property
    def name(self) -> str:
        """The model file's name (as said in results, events and the log)."""

    @property
    def file(self) -> ModelFile:
        """The bytes as read and verified, their sha256 and what the static checks found."""

    @property
    def backend(self) -> Backend:
        """The interpreter package (its name and version are reported; a CPU re-check uses it)."""

    @property
    def delegate(self) -> str:
        """Where invoke() runs: "cpu" or "edgetpu"."""

    @property
    def threads(self) -> int:
        """The interpreter's CPU threads."""

    @property
    def notes(self) -> tuple[str, ...]:
        """What the load had to work around (a delegate that fell back to the CPU)."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def input_view(self, i: int = 0) -> Callable[[], npt.NDArray[Any]]:
        """A function returning a writable view of input i's memory (zero-copy). Keep the
        function, not the array: an inline interpreter refuses to invoke while a view is alive."""

    def read_input(self, i: int = 0) -> npt.NDArray[Any]:
        """A copy of input i as it was last fed (the guard's diagnosis and CPU re-check, `check`'s
        audit of the prepared tensor)."""

    def invoke(self) -> None:
        """Run the model on what is in the inputs; raise ModelError when it fails."""

    def fetch_outputs(self) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[np.float32]]]:
        """Every output as the model produced it and in real units (dequantized), in buffers
        reused across invokes: read them before the next invoke()."""

    def close(self) -> None:
        """Release what the model holds beyond memory (a worker process, shared memory)."""
