"""`edge-agent check`: load the model, show the compiled plan, run samples, give a verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.errors import ModelError, SourceError
from edge_agent.pipeline import Fault, Inference, Outcome, Pipeline
from edge_agent.runtime.inspection import _fmt_tensor
from edge_agent.sources.base import Frame, SourceProblem, Stamp, frame_from_pixels
from edge_agent.sources.csv_rows import CsvRowSource
from edge_agent.sources.images import IMAGE_SUFFIXES, decode_image


def _sample_frames(path: str, pipeline: Pipeline, cfg: AgentConfig) -> list[Frame | SourceProblem]:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        names = tuple(f.name for f in pipeline.pre.features)
        src = CsvRowSource(cfg.source.model_copy(update={"path": path, "loop": False}), feature_names=names)
        items: list[Frame | SourceProblem] = []
        while (item := src.read()) is not None:
            items.append(item)
        src.close()
        return items
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        return [SourceProblem(p.name, "not an image (.jpg .jpeg .png .bmp) or a .csv file")]
    img = decode_image(p)
    if isinstance(img, str):
        return [SourceProblem(p.name, img)]
    return [frame_from_pixels(Stamp(), p.name, img, "bgr")]


def _describe_outcome(o: Outcome) -> tuple[str, bool]:
    if isinstance(o, Inference):
        if "top" in o.fields:
            tops = ", ".join(f"{t['label']} {t['score']:.3f}" for t in o.fields["top"])
            text = f"top: {tops or '(none above threshold)'}"
        else:
            text = "values: " + ", ".join(f"{k}={v:.4g}" for k, v in o.fields.get("values", {}).items())
        if o.imputed:
            text += f" (imputed: {', '.join(o.imputed)})"
        return f"{text}  [invoke {o.latency_ms['invoke']:.2f} ms]  guard: ok", True
    if isinstance(o, Fault):
        return f"guard: FAULT {o.fault.kind}: {o.fault.message}", False
    return f"skipped ({o.kind}): {o.message}", False


def run_check(cfg: AgentConfig, samples: list[str], out: Callable[[str], None]) -> int:
    try:
        pipeline = Pipeline.load(cfg)
    except ModelError as err:
        out(f"model: FAULT: {err}")
        return 1
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
    healthy = True
    try:
        outcome = pipeline.selftest()
    except ModelError as err:
        out(f"self-test: FAULT: {err}")
        return 1
    out("preprocessing plan:")
    for line in pipeline.describe():
        out(f"  {line}")
    text, ok = _describe_outcome(outcome)
    out(f"self-test: {text}")
    healthy &= ok
    for sample in samples:
        try:
            items = _sample_frames(sample, pipeline, cfg)
        except SourceError as err:
            out(f"{sample}: FAULT: {err}")
            healthy = False
            continue
        for item in items:
            if isinstance(item, SourceProblem):
                out(f"{item.source}: FAULT: {item.message}")
                healthy = False
                continue
            try:
                text, ok = _describe_outcome(pipeline.process(item))
            except ModelError as err:
                text, ok = f"FAULT: {err}", False
            out(f"{item.source}: {text}")
            healthy &= ok
    out(f"verdict: {'healthy' if healthy else 'FAULT found'}")
    return 0 if healthy else 1
