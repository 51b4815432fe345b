"""Loading a .tflite model into an interpreter, with clear one-line errors.

Every way a model can fail on a device gets its own `ModelError.reason` and a message an
operator can act on: missing file, unreadable file (a directory, a FIFO, a device, too big), not
a TFLite file or a corrupt one (the static checks of `tflite_file`), hash mismatch, a file that
crashes or hangs the runtime (the trial load in a child, `trial`), Edge TPU model without a
Coral, custom op the runtime lacks, failure inside invoke().

A model file is untrusted: it is read with a bound, verified in Python, and loaded once in a
short-lived child process before this process's interpreter ever sees it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bounded import FileReadError, read_bytes_bounded
from edge_agent.config import ModelConfig
from edge_agent.errors import DelegateError, ModelError
from edge_agent.runtime.backends import Backend, select_backend
from edge_agent.runtime.tensors import TensorInfo, dequantize
from edge_agent.runtime.tflite_file import TfliteFileError, TfliteModelInfo, parse_model_bytes
from edge_agent.runtime.trial import trial_load

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_OP = "edgetpu-custom-op"
# a model file is read whole into memory: 1 GiB is far above any model a Pi or a Coral runs
# (mobilenet_v2 is 3.6 MB, the largest Edge TPU models ~100 MB) and far below /dev/zero
MAX_MODEL_BYTES = 1 << 30


@dataclass(frozen=True)
class ModelFile:
    """The bytes of a model file as read and verified once."""

    path: str
    data: bytes
    sha256: str
    info: TfliteModelInfo

    @functools.cached_property
    def name(self) -> str:  # asked for every result: computed once
        return Path(self.path).name


def read_model_file(path: str, *, expected_sha256: str | None = None, max_bytes: int = MAX_MODEL_BYTES) -> ModelFile:
    """The file's bytes, read with a bound (regular files only), hashed and verified statically."""
    p = Path(path)
    try:
        data = read_bytes_bounded(p, what="model file", max_bytes=max_bytes)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}", reason="missing") from None
    except FileReadError as err:  # a directory, a FIFO, a device, over the limit: said as such
        raise ModelError(str(err), reason="unreadable") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise ModelError(
            f"cannot read model file {path}: {getattr(err, 'strerror', None) or err}", reason="unreadable"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelError(
            f"model file {path} has sha256 {digest}, but model.sha256 pins {expected_sha256.lower()}: "
            "refusing to load a file that is not the one configured",
            reason="hash_mismatch",
        )
    try:
        info = parse_model_bytes(data)
    except TfliteFileError as err:
        raise ModelError(f"{path} is not a usable TFLite model: {err}", reason="corrupt") from None
    return ModelFile(path=str(p), data=data, sha256=digest, info=info)


@contextlib.contextmanager
def _quiet_delegate_del() -> Iterator[None]:
    """Swallow the library's own "Exception ignored in: Delegate.__del__" noise.

    A failed `load_delegate` leaves a half-built Delegate whose __del__ raises
    AttributeError ('_library'); Python prints it through sys.unraisablehook. Only that
    one message is hidden; anything else still reaches the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        obj = getattr(unraisable, "object", None)
        if "Delegate.__del__" in getattr(obj, "__qualname__", ""):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def load_edgetpu_delegate(backend: Backend, device: str | None) -> Any:
    options = {"device": device} if device else {}
    message = ""
    with _quiet_delegate_del():
        try:
            return backend.load_delegate(EDGETPU_LIBRARY, options)
        except (OSError, ValueError, RuntimeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            message = f"Edge TPU delegate unavailable ({EDGETPU_LIBRARY}, device {device or 'any'}): {first}"
    raise DelegateError(message, reason="delegate_unavailable")


@dataclass
class LoadedModel:
    """An interpreter in this process with its tensors allocated, ready for `invoke()`: an
    `InferenceModel` (runtime.model). `interpreter` is for this process's own runtime code (the
    inference worker's child, `bench`'s bare loop); the agent's other parts use the protocol."""

    file: ModelFile
    backend: Backend
    interpreter: Any
    delegate: str  # "cpu" or "edgetpu"
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    threads: int
    notes: tuple[str, ...] = ()
    _out_buffers: list[npt.NDArray[np.float32]] = field(default_factory=list)
    _raw_buffers: list[npt.NDArray[Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.file.name

    def input_view(self, i: int = 0) -> Callable[[], npt.NDArray[Any]]:
        """A function returning a writable view of input i's memory (zero-copy).

        Keep the function, not the array: invoke() refuses to run while a view is alive.
        """
        fn: Callable[[], npt.NDArray[Any]] = self.interpreter.tensor(self.inputs[i].index)
        return fn

    def set_input(self, i: int, value: npt.NDArray[Any]) -> None:
        self.interpreter.set_tensor(self.inputs[i].index, value)

    def read_input(self, i: int = 0) -> npt.NDArray[Any]:
        """A copy of input i as it was last fed."""
        value: npt.NDArray[Any] = self.interpreter.get_tensor(self.inputs[i].index)
        return value

    def invoke(self) -> None:
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()
            raise ModelError(
                f"model {self.name} failed inside invoke(): {' '.join(first[:2]) if first else type(err).__name__}",
                reason="invoke_failed",
            ) from None

    def raw_output(self, i: int = 0) -> npt.NDArray[Any]:
        """A copy of output i as the model produced it (quantized or not)."""
        out: npt.NDArray[Any] = self.interpreter.get_tensor(self.outputs[i].index)
        return out

    def output(self, i: int = 0) -> npt.NDArray[np.float32]:
        """Output i in real units (dequantized), in a buffer reused across frames."""
        return self.fetch_outputs()[1][i]

    def fetch_outputs(self) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[np.float32]]]:
        """Every output as the model produced it and in real units, in buffers reused across
        frames: read through short-lived views of the interpreter's memory, so no per-frame copy
        is allocated (get_tensor() would allocate one per output per frame)."""
        if not self._out_buffers:
            self._raw_buffers = [np.empty(o.shape, dtype=o.dtype) for o in self.outputs]
            self._out_buffers = [np.empty(o.shape, dtype=np.float32) for o in self.outputs]
        for i, info in enumerate(self.outputs):
            view = self.interpreter.tensor(info.index)()
            raw = self._raw_buffers[i]
            if raw.shape != view.shape:  # a model with dynamic output shapes
                raw = self._raw_buffers[i] = np.empty(view.shape, dtype=view.dtype)
                self._out_buffers[i] = np.empty(view.shape, dtype=np.float32)
            np.copyto(raw, view)
            del view  # invoke() refuses to run while a view is alive
            dequantize(info, raw, out=self._out_buffers[i])
        return self._raw_buffers, self._out_buffers

    def close(self) -> None:
        """Nothing to release but memory: the interpreter is freed with the last reference to
        this object, so a model still referenced (an overlap thread finishing) stays usable."""


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _build_interpreter(backend: Backend, mf: ModelFile, threads: int, delegates: list[Any]) -> Any:
    unsupported = [op for op in mf.info.custom_ops if op != EDGETPU_OP]
    try:
        kwargs: dict[str, Any] = {"model_content": mf.data, "num_threads": threads}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        interpreter = backend.interpreter_class(**kwargs)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        text = str(err)
        if EDGETPU_OP in text or (mf.info.edgetpu_compiled and not delegates):
            raise ModelError(
                f"{mf.name} is compiled for the Edge TPU ({EDGETPU_OP}) and cannot run on the CPU: "
                'attach a Coral and set model.delegate = "edgetpu", or use the model\'s CPU version',
                reason="edgetpu_required",
            ) from None
        if "unresolved custom op" in text or unsupported:
            ops = ", ".join(unsupported) or text.rsplit("custom op:", maxsplit=1)[-1].split(".", maxsplit=1)[0].strip()
            raise ModelError(
                f"{mf.name} needs custom op(s) {ops} which the {backend.name} runtime does not provide",
                reason="unsupported_op",
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise ModelError(f"{mf.name} cannot be loaded by {backend.name}: {first}", reason="load_failed") from None
    return interpreter


def check_in_child(mf: ModelFile, backend: Backend) -> None:
    """The trial load (see `trial`): raise ModelError if the file crashes or hangs the runtime."""
    trial_load(mf.data, sha256=mf.sha256, name=mf.name, interpreter=backend.name, version=backend.version)


def load_model(cfg: ModelConfig, *, backend: Backend | None = None, trial: bool = True) -> LoadedModel:
    """Load cfg.path (or the fallback) per the delegate policy; raise ModelError on failure.

    `trial=False` skips the trial load in a child: only for a caller that is itself the contained
    process (the `isolation = "process"` worker)."""
    backend = backend or select_backend(cfg.interpreter)
    threads = cfg.threads or _default_threads()
    mf = read_model_file(cfg.path, expected_sha256=cfg.sha256)
    if trial:
        check_in_child(mf, backend)
    if cfg.delegate == "cpu":
        return _finish(backend, mf, threads, [], kind="cpu", notes=())
    try:
        delegate = load_edgetpu_delegate(backend, cfg.edgetpu_device)
        return _finish(backend, mf, threads, [delegate], kind="edgetpu", notes=())
    except DelegateError as err:
        if cfg.on_delegate_error == "fail":
            raise
        note = f"{err}; falling back to the CPU"
        log.warning("%s", note)
    if cfg.fallback_path:
        # the pin names the primary model; the fallback is checked by its own loader
        fb = read_model_file(cfg.fallback_path)
        if trial:
            check_in_child(fb, backend)
        return _finish(backend, fb, threads, [], kind="cpu", notes=(note,))
    if mf.info.edgetpu_compiled:
        raise DelegateError(
            f"{note}, but {mf.name} is compiled for the Edge TPU and model.fallback_path is not set: "
            "give a CPU model in model.fallback_path",
            reason="delegate_unavailable",
        )
    return _finish(backend, mf, threads, [], kind="cpu", notes=(note,))


def tensor_details(
    mf: ModelFile, backend: Backend, interpreter: Any
) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """The inputs and outputs; the wrapper decodes names and reads quantization as it goes, so what it
    raises on a file the static checks let through is a ModelError, not a traceback."""
    try:
        inputs = tuple(TensorInfo.from_details(d) for d in interpreter.get_input_details())
        outputs = tuple(TensorInfo.from_details(d) for d in interpreter.get_output_details())
    except (RuntimeError, ValueError, TypeError, KeyError) as err:  # ValueError includes UnicodeDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{mf.name}: {backend.name} cannot describe the model's tensors: {first}", reason="corrupt"
        ) from None
    return inputs, outputs


def _finish(
    backend: Backend, mf: ModelFile, threads: int, delegates: list[Any], *, kind: str, notes: tuple[str, ...]
) -> LoadedModel:
    interpreter = _build_interpreter(backend, mf, threads, delegates)
    inputs, outputs = tensor_details(mf, backend, interpreter)
    return LoadedModel(
        file=mf,
        backend=backend,
        interpreter=interpreter,
        delegate=kind,
        inputs=inputs,
        outputs=outputs,
        threads=threads,
        notes=notes,
    )
