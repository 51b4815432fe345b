"""`edge-agent check`: load the model, show the compiled plan, run samples, give a verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import AgentConfig
from edge_agent.config.source import CsvOptions
from edge_agent.errors import ModelError, SourceError
from edge_agent.pipeline import Fault, Inference, Outcome, Pipeline
from edge_agent.postprocess.results import Classification, Values
from edge_agent.preprocess import ImagePlan
from edge_agent.reference import reference_prepare
from edge_agent.runtime.inspection import _fmt_tensor
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources.base import Frame, SourceProblem, Stamp, frame_from_pixels
from edge_agent.sources.csv_rows import CsvRowSource
from edge_agent.sources.images import IMAGE_SUFFIXES, decode_image


def _sample_frames(path: str, pipeline: Pipeline, cfg: AgentConfig) -> list[Frame | SourceProblem]:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        names = tuple(f.name for f in pipeline.pre.features)
        # a CSV sample is read as a `csv` source would read it, whatever the configured kind
        opts = CsvOptions(path=path, loop=False, delimiter=cfg.source.delimiter, columns=cfg.source.columns)
        src = CsvRowSource(opts, feature_names=names)
        items: list[Frame | SourceProblem] = []
        while (item := src.read()) is not None:
            items.append(item)
        src.close()
        return items
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        return [SourceProblem(p.name, "not an image (.jpg .jpeg .png .bmp) or a .csv file")]
    img = decode_image(p, cfg.source.max_pixels)
    if isinstance(img, str):
        return [SourceProblem(p.name, img)]
    return [frame_from_pixels(Stamp(), p.name, img, "bgr")]


def _real(values: npt.NDArray[Any], info: TensorInfo) -> npt.NDArray[np.float64]:
    v = values.astype(np.float64)
    return (v - info.zero_point) * info.scale if info.is_integer and info.quantized else v


def audit_prepared(pipeline: Pipeline, frame: Frame) -> tuple[list[str], bool]:
    """Per-channel statistics of the prepared tensor, what the training transform implies, and
    the largest difference from the float64 reference implementation (its own resize)."""
    plan = pipeline.pre.plan_for(frame)
    if not isinstance(plan, ImagePlan) or frame.pixels is None:
        return [], True
    info = plan.info
    got = _real(pipeline.model.read_input(0)[0], info)
    want = _real(reference_prepare(frame.pixels, frame.order, plan.transform, info)[0], info)
    axis = 0 if plan.layout.nchw else -1
    table = _real(plan.tables, info)  # (256, C): what each pixel value of each channel becomes
    _, std = plan.transform.per_channel(plan.layout.channels)
    lines: list[str] = []
    ok = True
    for c in range(plan.layout.channels):
        ch = np.take(got, c, axis=axis)
        lo, hi = float(table[:, c].min()), float(table[:, c].max())
        lines.append(
            f"  channel {c}: min {ch.min():.4g}  max {ch.max():.4g}  mean {ch.mean():.4g}   "
            f"(the transform maps pixels 0..255 to [{lo:.4g}, {hi:.4g}])"
        )
        if ch.min() < lo - 1e-6 or ch.max() > hi + 1e-6:
            ok = False
            lines.append(f"  MISMATCH: channel {c} holds values outside what the training transform can produce")
    # one source grey level through the resize, plus one quantization step for integer targets
    step = info.scale if info.is_integer and info.quantized else 0.0
    tol = max(plan.transform.scale / s for s in std) + step + 1e-5
    diff = float(np.abs(got - want).max())
    if diff <= tol:
        lines.append(f"  matches the reference transform: largest difference {diff:.3g} (tolerance {tol:.3g})")
    else:
        ok = False
        lines.append(
            f"  MISMATCH: the prepared input differs from the reference transform by up to {diff:.4g} "
            f"(more than one grey level, {tol:.3g}): the compiled plan is not reproducing the training transform"
        )
    return lines, ok


def _describe_outcome(o: Outcome) -> tuple[str, bool]:
    if isinstance(o, Inference):
        r = o.result
        if isinstance(r, Classification):
            tops = ", ".join(f"{t.label} {t.score:.3f}" for t in r.top)
            text = f"top: {tops or '(none above threshold)'}"
        else:
            values = dict(r.values) if isinstance(r, Values) else {}
            text = "values: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        if o.imputed:
            text += f" (imputed: {', '.join(o.imputed)})"
        if o.clipped:
            text += f" (clipped to the declared range: {', '.join(o.clipped)})"
        text += f"  [invoke {o.latency_ms['invoke']:.2f} ms]"
        if o.warnings:
            # the result would be published, but the guard flagged the frame: that is a fault found
            flagged = "; ".join(f"{w.kind}: {w.message}" for w in o.warnings)
            return f"{text}  guard: FAULT (warning) {flagged}", False
        return f"{text}  guard: ok", True
    if isinstance(o, Fault):
        return f"guard: FAULT {o.fault.kind}: {o.fault.message}", False
    return f"skipped ({o.kind}): {o.message}", False


def run_check(cfg: AgentConfig, samples: list[str], out: Callable[[str], None]) -> int:
    try:
        pipeline = Pipeline.load(cfg, source_check=False)
    except ModelError as err:
        out(f"model: FAULT: {err}")
        return 1
    try:
        return _check_loaded(pipeline, cfg, samples, out)
    finally:
        pipeline.close()  # stops an isolated model's worker process


def _check_loaded(pipeline: Pipeline, cfg: AgentConfig, samples: list[str], out: Callable[[str], None]) -> int:
    _print_model(pipeline, out)
    try:
        outcome = pipeline.selftest()
    except ModelError as err:
        out(f"self-test: FAULT: {err}")
        return 1
    out("preprocessing plan:")
    for line in pipeline.describe():
        out(f"  {line}")
    text, healthy = _describe_outcome(outcome)
    out(f"self-test: {text}")
    for sample in samples:
        healthy &= _check_sample(sample, pipeline, cfg, out)
    out(f"verdict: {'healthy' if healthy else 'FAULT found'}")
    return 0 if healthy else 1


def _print_model(pipeline: Pipeline, out: Callable[[str], None]) -> None:
    m = pipeline.model
    out(f"model: {m.file.path} (sha256 {m.file.sha256})")
    out(f"interpreter: {m.backend.name} {m.backend.version}, delegate {m.delegate}, {m.threads} threads")
    out("inputs:")
    for t in m.inputs:
        out(_fmt_tensor(t))
    out("outputs:")
    for t in m.outputs:
        out(_fmt_tensor(t))
    for w in pipeline.warnings:
        out(f"warning: {w}")
    for n in pipeline.notices:
        out(f"warning: {n.message}")


def _check_sample(sample: str, pipeline: Pipeline, cfg: AgentConfig, out: Callable[[str], None]) -> bool:
    """Every frame of one sample file through the pipeline and the guard; False on any fault."""
    try:
        items = _sample_frames(sample, pipeline, cfg)
    except SourceError as err:
        out(f"{sample}: FAULT: {err}")
        return False
    healthy = True
    for item in items:
        if isinstance(item, SourceProblem):
            out(f"{item.source}: FAULT: {item.message}")
            healthy = False
        else:
            healthy &= _check_frame(item, pipeline, out)
    return healthy


def _check_frame(item: Frame, pipeline: Pipeline, out: Callable[[str], None]) -> bool:
    try:
        text, healthy = _describe_outcome(pipeline.process(item))
    except ModelError as err:
        text, healthy = f"FAULT: {err}", False
    out(f"{item.source}: {text}")
    if item.pixels is not None:
        out(f"  plan for {item.pixels.shape[1]}×{item.pixels.shape[0]} frames: {'; '.join(pipeline.describe(item))}")
        out("  prepared input, per channel:")
        lines, fine = audit_prepared(pipeline, item)
        for line in lines:
            out(line)
        healthy &= fine
    return healthy
