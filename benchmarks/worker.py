"""Inference isolation overhead: frames/s with isolation = "process" against "inline".

    python benchmarks/worker.py [--frames N] [--threads N] [--json]

Runs mobilenet_v2_1.0_224_quant.tflite from ../shared/testdata/coral (skipped with a message when
absent) on the CPU: each frame writes a new image into the model's input view, invokes, and fetches
the outputs, exactly as the pipeline does. The two modes are measured alternately in rounds and the
best round of each is kept. Prints the frames/s of each, and the ratio process/inline (target ≥ 0.97).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import ModelConfig
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.worker import WorkerModel

MODEL = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"
TARGET = 0.97


def fps(model: LoadedModel | WorkerModel, frames: list[Any], n: int) -> float:
    view = model.input_view(0)
    t0 = time.perf_counter()
    for i in range(n):
        np.copyto(view(), frames[i % len(frames)])
        model.invoke()
        model.fetch_outputs()
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not MODEL.is_file():
        print(f"skipped: {MODEL} not found (the Coral test data lives in shared/testdata beside the repository)")
        return 0
    base = {"path": str(MODEL), "threads": args.threads}
    inline = load_model(ModelConfig.model_validate(base))
    worker = WorkerModel(ModelConfig.model_validate({**base, "isolation": "process"}))
    try:
        info = inline.inputs[0]
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, size=info.shape, endpoint=True).astype(info.dtype) for _ in range(8)]
        fps(inline, frames, 10)  # warm up both
        fps(worker, frames, 10)
        best = {"inline": 0.0, "process": 0.0}
        for _ in range(args.rounds):
            best["inline"] = max(best["inline"], fps(inline, frames, args.frames))
            best["process"] = max(best["process"], fps(worker, frames, args.frames))
    finally:
        worker.close()
    ratio = best["process"] / best["inline"]
    result = {**{k: round(v, 2) for k, v in best.items()}, "ratio": round(ratio, 4), "target": TARGET}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model    {MODEL.name}, {inline.threads} threads, {args.rounds} rounds of {args.frames} frames")
        print(f"inline   {best['inline']:8.2f} frames/s")
        print(f"process  {best['process']:8.2f} frames/s")
        print(f"ratio    {ratio:8.4f} (target >= {TARGET}){'' if ratio >= TARGET else '  BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
