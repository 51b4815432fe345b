"""`edge-agent inspect`: what a model file holds, even when this machine cannot run it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.runtime.backends import Backend
from edge_agent.runtime.loader import EDGETPU_OP, ModelFile, check_in_child, tensor_details
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.runtime.tflite_file import TensorMetadata, TfliteModelInfo


@dataclass(frozen=True)
class ModelReport:
    file: ModelFile
    backend: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    runnable_here: bool
    note: str | None


def inspect_model(mf: ModelFile, backend: Backend, *, trial: bool = True) -> ModelReport:
    # the file is untrusted like any model the agent loads: a trial load in a child first
    if trial:
        check_in_child(mf, backend)
    # Tensor details do not need allocated tensors, so an Edge TPU model (whose custom op
    # fails at allocate) can still be described on a machine without a Coral.
    try:
        interpreter: Any = backend.interpreter_class(model_content=mf.data)
    except (RuntimeError, ValueError) as err:
        raise ModelError(
            f"{mf.name}: {backend.name} cannot read the model: {str(err).splitlines()[0]}", reason="corrupt"
        ) from None
    inputs, outputs = tensor_details(mf, backend, interpreter)
    note = None
    runnable = True
    try:
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        runnable = False
        if mf.info.edgetpu_compiled:
            note = f'compiled for the Edge TPU ({EDGETPU_OP}): runs only with a Coral (model.delegate = "edgetpu")'
        else:
            note = f"cannot run on {backend.name}: {str(err).strip().splitlines()[0]}"
    return ModelReport(mf, backend.name, inputs, outputs, runnable, note)


def _fmt_tensor(t: TensorInfo) -> str:
    shape = "×".join(str(s) for s in t.shape) or "scalar"
    return f"  [{t.index}] {t.name or '(unnamed)'}  {t.dtype.name}  {shape}  quantization: {t.describe_quantization()}"


def _floats(values: tuple[float, ...] | None) -> str:
    return "none" if values is None else "[" + ", ".join(f"{v:g}" for v in values) + "]"


def format_report(r: ModelReport) -> list[str]:
    info = r.file.info
    lines = [
        f"model: {r.file.path}",
        f"size: {len(r.file.data)} bytes  sha256: {r.file.sha256}",
        f"interpreter: {r.backend}",
        "inputs:",
        *(_fmt_tensor(t) for t in r.inputs),
        "outputs:",
        *(_fmt_tensor(t) for t in r.outputs),
    ]
    ops = sorted({o.builtin_name or o.custom_code or str(o.builtin_code) for o in info.operators})
    lines.append("operators: " + (", ".join(ops) if ops else "none"))
    if info.custom_ops:
        lines.append("custom ops: " + ", ".join(info.custom_ops))
    lines.append(f"edge tpu ops: {'yes (' + EDGETPU_OP + ')' if info.edgetpu_compiled else 'none'}")
    lines.extend(_fmt_metadata(info))
    if r.note:
        lines.append(f"note: {r.note}")
    return lines


def _fmt_metadata(info: TfliteModelInfo) -> list[str]:
    md = info.metadata
    if md is None:
        return ["metadata: none"]
    lines = [f"metadata: name={md.name!r} version={md.version!r} author={md.author!r} license={md.license!r}"]
    if md.description:
        lines.append(f"  description: {md.description}")
    for role, tensors in (("input", md.inputs), ("output", md.outputs)):
        for i, tm in enumerate(tensors):
            lines.append(f"  {role} {i}: {tm.name or '(unnamed)'}")
            lines.extend(_fmt_tensor_metadata(tm, info.associated_files))
    return lines


def _fmt_tensor_metadata(tm: TensorMetadata, packed_files: dict[str, bytes]) -> list[str]:
    lines = []
    if tm.normalization_mean is not None or tm.normalization_std is not None:
        lines.append(f"    normalization: mean {_floats(tm.normalization_mean)} std {_floats(tm.normalization_std)}")
    if tm.color_space:
        lines.append(f"    color space: {tm.color_space}")
    for af in tm.associated_files:
        if af.name is None:
            continue
        size = len(packed_files.get(af.name, b""))
        packed = f", packed in the file ({size} bytes)" if af.name in packed_files else ""
        lines.append(f"    associated file: {af.name} ({af.type}{packed})")
    return lines
