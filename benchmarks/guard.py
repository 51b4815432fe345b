"""The guard's cost per frame, and as a share of invoke(), with the default settings.

    python benchmarks/guard.py [--frames N] [--json]

For each model (the bundled digits_float, a float-output model where the output checks do
their real work; mobilenet_v2_1.0_224_quant from ../shared/testdata/coral when present),
the same interpreter and threads are used for both figures:
  invoke   a bare interpreter.invoke() loop
  guard    what the pipeline adds per frame: the frozen-source sample, the input statistics
           (on the share of frames the default budget allows), the NaN/Inf test, saturation,
           the stuck-output comparison, and the classification score range
plus the bytes tracemalloc sees allocated per guarded frame.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.config import parse_config
from edge_agent.pipeline import Pipeline
from edge_agent.preprocess import ImagePlan
from edge_agent.sources.base import Frame

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "edge_agent" / "bundled"
CORAL = REPO.parent / "shared" / "testdata" / "coral"
IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def models() -> list[tuple[str, dict[str, Any], Path]]:
    out = [
        (
            "digits_float",
            {"model": {"path": str(BUNDLED / "digits_float.tflite")}, "preprocess": IMAGENET},
            next(iter(sorted((BUNDLED / "digits_frames").glob("*.png")))),
        )
    ]
    if CORAL.is_dir():
        out.append(
            (
                "mobilenet_v2_1.0_224_quant",
                {"model": {"path": str(CORAL / "mobilenet_v2_1.0_224_quant.tflite")}},
                CORAL / "cat.bmp",
            )
        )
    return out


def per_call_us(fn: Any, n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def bench(frames: int) -> list[dict[str, Any]]:
    rows = []
    for name, raw_cfg, sample in models():
        p = Pipeline.load(parse_config(raw_cfg))
        pixels = cv2.imread(str(sample))
        frame = Frame(1, 0.0, 0.0, sample.name, pixels=pixels, order="bgr")
        p.process(frame)  # compile the plan, fill the tensors
        plan = p.pre.plan
        assert isinstance(plan, ImagePlan)
        model, ig, og = p.model, p.input_guard, p.output_guard
        raws, outs = model.fetch_outputs()
        n_invoke = max(20, frames // 20) if name.startswith("mobilenet") else frames
        invoke_us = per_call_us(model.interpreter.invoke, n_invoke)
        observe_us = per_call_us(lambda: ig.observe(frame), frames)
        image = plan.resize(pixels)  # the frame at the model's size, as preprocessing hands it to the checks
        stats_us = per_call_us(lambda: ig.check_image(plan, image), frames)
        # the default budget: input statistics on 1 frame in `every`
        budget = p.cfg.guard.budget_percent / 100.0
        finite_us = per_call_us(lambda: og.finite(outs), frames)
        saturated_us = per_call_us(lambda: og.saturated(raws), frames)
        stuck_us = per_call_us(lambda: og.stuck(outs, input_changed=True), frames)
        every = max(1, int(np.ceil((observe_us + stats_us + stuck_us) / (budget * invoke_us))))

        def scores() -> None:
            assert p.classifier is not None
            probs = p.classifier.activate(outs[0])
            float(probs.min()), float(probs.max())

        scores_us = per_call_us(scores, frames)
        guard_us = (observe_us + stats_us + stuck_us) / every + finite_us + saturated_us

        # allocation of the guard work itself over many frames
        def guarded() -> None:
            ig.observe(frame)
            og.finite(outs)
            og.saturated(raws)

        guarded()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            guarded()
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "model": name,
                "threads": model.threads,
                "invoke_us": round(invoke_us, 1),
                "observe_us": round(observe_us, 2),
                "input_stats_us": round(stats_us, 2),
                "input_stats_every": every,
                "finite_us": round(finite_us, 2),
                "saturated_us": round(saturated_us, 2),
                "stuck_us": round(stuck_us, 2),
                "guard_us": round(guard_us, 2),
                "guard_share_pct": round(100 * guard_us / invoke_us, 2),
                "score_range_us": round(scores_us, 2),
                "alloc_peak_bytes": peak - base,
                "alloc_retained_bytes": cur - base,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = bench(args.frames)
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(
            f"{r['model']} ({r['threads']} threads): invoke {r['invoke_us']} µs; guard {r['guard_us']} µs per frame "
            f"= {r['guard_share_pct']}% of invoke"
        )
        print(
            f"  frozen-source sample {r['observe_us']} µs and input statistics {r['input_stats_us']} µs "
            f"on 1 frame in {r['input_stats_every']} (budget); NaN/Inf {r['finite_us']} µs; saturation "
            f"{r['saturated_us']} µs; stuck comparison {r['stuck_us']} µs on checked frames; "
            f"score range (with the softmax the decoder needs anyway) {r['score_range_us']} µs"
        )
        print(
            f"  tracemalloc over 1000 guarded frames: peak {r['alloc_peak_bytes']} B, retained {r['alloc_retained_bytes']} B"
        )


if __name__ == "__main__":
    main()
