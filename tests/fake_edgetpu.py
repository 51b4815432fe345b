"""A stand-in for a Coral USB Accelerator and libedgetpu (there is no Coral on this machine).

It follows what the real parts do, as documented and as reported in google-coral/edgetpu issues:
- `load_delegate("libedgetpu.so.1", {"device": ...})` returns a delegate when a matching device is
  plugged in; without one, libedgetpu's `tflite_plugin_create_delegate` returns NULL and the
  interpreter package raises `ValueError("Failed to load delegate from libedgetpu.so.1\\n...")`.
- The interpreter takes the delegate through `experimental_delegates=[...]` and offers the
  usual API (allocate_tensors, get_*_details, tensor, set_tensor, get_tensor, invoke).
- In the middle of a run the stick can fail in three ways: invoke() raises RuntimeError
  ("Node number N (EdgeTpuDelegateForCustomOp) failed to invoke."); libedgetpu aborts the whole
  process after logging "F ... transfer on tag 1 failed. Abort. Deadline exceeded: USB transfer
  error 2 [LibUsbDataOutCallback]" (also what happens when the stick is pulled out); or invoke()
  never returns until the stick is replugged.

The state of the simulated stick lives in a file named by $FAKE_EDGETPU_STATE, so that inference
worker processes (started with "spawn") see the same stick as the test: "ok", "absent", "error",
"abort" or "hang".

NOT verified here: the real libedgetpu and its error texts across versions, models compiled for
the Edge TPU (the fake runs CPU models "on the TPU" with the real TFLite interpreter), the
latency of the real accelerator, and USB re-enumeration after a replug.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.runtime.backends import Backend, select_backend

STATE_ENV = "FAKE_EDGETPU_STATE"
STATES = ("ok", "absent", "error", "abort", "hang")


class Coral:
    """The test's hand on the simulated stick."""

    def __init__(self, path: Path, state: str = "ok") -> None:
        self.path = path
        self.set(state)

    def set(self, state: str) -> None:
        assert state in STATES, state
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(state)
        tmp.replace(self.path)  # atomic: a worker never reads half a state


def _state() -> str:
    path = os.environ.get(STATE_ENV)
    if not path:
        raise RuntimeError(f"{STATE_ENV} is not set: the test must create a Coral first")
    return Path(path).read_text().strip()


class FakeEdgeTpuDelegate:
    """What `load_delegate` returns: an opaque handle (the real one wraps a TfLiteDelegate*)."""

    def __init__(self, library: str, options: dict[str, Any]) -> None:
        self.library = library
        self.options = options


def load_delegate(library: str, options: dict[str, Any] | None = None) -> FakeEdgeTpuDelegate:
    options = options or {}
    device = str(options.get("device", "usb"))
    if _state() == "absent" or not device.startswith("usb"):
        # the real message: the package's prefix, then what the plugin reported (nothing here)
        raise ValueError(f"Failed to load delegate from {library}\n")
    return FakeEdgeTpuDelegate(library, options)


class EdgeTpuInterpreter:
    """The real interpreter, with the stick's failures added to invoke()."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def invoke(self) -> None:
        state = _state()
        if state == "error":
            raise RuntimeError("Node number 0 (EdgeTpuDelegateForCustomOp) failed to invoke.\n")
        if state in ("abort", "absent"):
            sys.stderr.write(
                "F :859] transfer on tag 1 failed. Abort. Deadline exceeded: USB transfer error 2 "
                "[LibUsbDataOutCallback]\n"
            )
            sys.stderr.flush()
            os.abort()
        if state == "hang":
            while True:
                time.sleep(3600)
        self._real.invoke()


def backend() -> Backend:
    """The Backend the agent is given: the real interpreter package, with a simulated Coral.
    Module-level, so that an inference worker started with "spawn" can import it by name."""
    real = select_backend(os.environ.get("EDGE_AGENT_TEST_INTERPRETER", "auto"))

    def interpreter(*args: Any, experimental_delegates: list[Any] | None = None, **kwargs: Any) -> Any:
        delegates = list(experimental_delegates or [])
        on_tpu = any(isinstance(d, FakeEdgeTpuDelegate) for d in delegates)
        others = [d for d in delegates if not isinstance(d, FakeEdgeTpuDelegate)]
        if others:
            kwargs["experimental_delegates"] = others
        built = real.interpreter_class(*args, **kwargs)
        return EdgeTpuInterpreter(built) if on_tpu else built

    return Backend(real.name, real.version, interpreter, load_delegate)
