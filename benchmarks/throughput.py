"""Throughput at the interpreter's limit: the agent against the bare invoke loop and a naive pipeline.

    python benchmarks/throughput.py [--rounds N] [--frames N] [--models mobilenet,digits_uint8,digits_float] [--json]

On a Pi: from the checkout, with the agent's venv, e.g. `.venv/bin/python benchmarks/throughput.py`
(mosquitto installed: `apt-get install mosquitto`; it is started on a free loopback port, no
system broker needed). mobilenet_v2_1.0_224_quant comes from ../shared/testdata/coral (skipped
with a message when absent), the digits models are bundled.

Settings, the same in every mode: ai-edge-litert, threads = 1, linear interpolation, frames
decoded before the run (the model's sample images decoded and resized to 640×480 and 1280×720,
four per size, cycled), the broker on loopback, results at QoS 0. Three modes, interleaved in
--rounds rounds (the order rotates each round) so machine noise hits all of them:
  bare   interpreter.invoke() back to back, the input set once
  agent  the real Agent (edge_agent.bench.BenchAgent: the agent's loop, capture thread, guard,
         outbox and MQTT link), fed by a source lending the decoded frames (capture policy
         "every": the capture thread hands the next frame over as soon as one is taken)
  naive  the loop of common examples: cv2.resize + cv2.cvtColor + astype(np.float32) / 255
         (normalized and quantized as the model needs; uint8 as is for the Coral model, whose
         quantization maps pixels 1:1) + set_tensor + invoke + get_tensor + dequantize + top-k
         + json.dumps + a plain paho publish
Printed per model and frame size:
  fps           best round of each mode; agent/bare and naive/bare (target agent/bare >= 0.95 on
                mobilenet from 640×480)
  cpu outside   µs of process CPU per frame minus the CPU of the invoking thread inside invoke()
                (threads = 1: invoke runs on that thread), median of the rounds; agent/naive
                (target <= 1/3)
  c2p p99       a fourth mode, "live": the agent fed like a camera at --camera-fps (capture
                policy "latest": the newest frame wins), capture-to-publish p99 over all rounds,
                against its bound invoke p99 + one frame interval + 3 ms
  alloc         bytes per frame in steady state under tracemalloc (a separate pass): net growth
                per frame, and the most held at once within a frame above its start (median),
                for the agent and the naive loop (target <= 1 KB, independent of frame size)
and the agent's per-stage p50 (ms) in a second table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.bench import Window, bare_loop, percentiles, run_agent
from edge_agent.broker import LocalBroker, free_port, start_mosquitto
from edge_agent.config import AgentConfig, parse_config
from edge_agent.runtime.loader import load_model
from edge_agent.sources.base import Frame, SourceProblem, Stamp, frame_from_pixels

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "edge_agent" / "bundled"
CORAL = REPO.parent / "shared" / "testdata" / "coral"
SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SLACK_MS = 3.0


@dataclass(frozen=True)
class ModelCase:
    name: str
    path: Path
    labels: Path | None
    samples: tuple[Path, ...]
    preprocess: dict[str, Any]


def cases() -> dict[str, ModelCase]:
    digits = tuple(sorted((BUNDLED / "digits_frames").glob("*.png"))[:4])
    imagenet = {"color": "rgb", "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {
        "mobilenet": ModelCase(
            "mobilenet_v2_1.0_224_quant",
            CORAL / "mobilenet_v2_1.0_224_quant.tflite",
            None,  # the labels embedded in the model
            (CORAL / "cat.bmp", CORAL / "grace_hopper.bmp"),
            {"color": "rgb", "scale": 1.0, "mean": [127.5], "std": [127.5]},
        ),
        "digits_uint8": ModelCase(
            "digits_uint8", BUNDLED / "digits_uint8.tflite", BUNDLED / "digits_labels.txt", digits, imagenet
        ),
        "digits_float": ModelCase(
            "digits_float", BUNDLED / "digits_float.tflite", BUNDLED / "digits_labels.txt", digits, imagenet
        ),
    }


def decoded_frames(case: ModelCase, size: tuple[int, int]) -> list[np.ndarray]:
    """Four frames of `size` (w, h), decoded and resized before the run."""
    out: list[np.ndarray] = []
    for i in range(4):
        img = cv2.imread(str(case.samples[i % len(case.samples)]), cv2.IMREAD_COLOR)
        assert img is not None, case.samples[i % len(case.samples)]
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        if i >= len(case.samples):
            img = cv2.flip(img, 1)  # not the same frame twice
        out.append(np.ascontiguousarray(img))
    return out


class DecodedSource:
    """Lends frames decoded beforehand, in turn; `fps` paces read() like a camera (`live`)."""

    def __init__(self, frames: list[np.ndarray], fps: float | None = None) -> None:
        self.name = f"decoded:{frames[0].shape[1]}x{frames[0].shape[0]}"
        self.live = fps is not None
        self._frames = frames
        self._interval = 1.0 / fps if fps else 0.0
        self._next_at = time.monotonic()
        self._stamp = Stamp()
        self._n = 0

    def read(self) -> Frame | SourceProblem | None:
        if self._interval:
            self._next_at += self._interval
            wait = self._next_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                self._next_at = time.monotonic()
        img = self._frames[self._n % len(self._frames)]
        self._n += 1
        return frame_from_pixels(self._stamp, self.name, img, "bgr")

    def release(self, frame: Frame) -> None:
        """Nothing to give back: the frames are shared and never written."""

    def close(self) -> None:
        """Nothing to close."""


def agent_config(case: ModelCase, port: int, state_dir: str, device: str) -> AgentConfig:
    model: dict[str, Any] = {
        "path": str(case.path),
        "task": "classification",
        "threads": 1,
        "interpreter": "ai-edge-litert",
    }
    if case.labels is not None:
        model["labels"] = str(case.labels)
    return parse_config(
        {
            "device": {"id": device, "state_dir": state_dir},
            "source": {"kind": "synthetic"},  # replaced by the decoded frames
            "model": model,
            "preprocess": {**case.preprocess, "resize": "stretch", "interpolation": "linear"},
            "postprocess": {"top_k": 3},
            "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "bench"},
        }
    )


# ---- the naive pipeline -----------------------------------------------------------------------
@dataclass
class Run:
    fps: float
    cpu_outside_us: float


class Naive:
    """The loop of common examples, with its own interpreter and its own plain paho client."""

    def __init__(self, case: ModelCase, port: int) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

        self.interp = Interpreter(model_path=str(case.path), num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        _, self.h, self.w, _ = self.inp["shape"]
        p = case.preprocess
        self.scale = np.float32(p["scale"])
        self.mean = np.asarray(p["mean"], np.float32)
        self.std = np.asarray(p["std"], np.float32)
        qs, qz = self.inp["quantization"]
        # the Coral model: (pixel - 127.5) / 127.5 quantized with scale 1/128, zero point 128 is the pixel
        self.pixels_as_is = self.inp["dtype"] == np.uint8 and abs(qs * 127.5 - p["scale"]) < 0.01 and qz == 128
        self.labels = case.labels.read_text().splitlines() if case.labels else [str(i) for i in range(1001)]
        self.name = case.name
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{free_port()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.invoke_cpu = 0.0

    def frame(self, i: int, img: np.ndarray) -> None:
        x = cv2.resize(img, (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        if self.pixels_as_is:
            tensor = np.expand_dims(x, 0)
        else:
            f = (x.astype(np.float32) * self.scale - self.mean) / self.std
            if self.inp["dtype"] == np.float32:
                tensor = np.expand_dims(f, 0)
            else:
                qs, qz = self.inp["quantization"]
                tensor = np.expand_dims(np.clip(np.round(f / qs + qz), 0, 255).astype(np.uint8), 0)
        self.interp.set_tensor(self.inp["index"], tensor)
        t0, c0 = time.perf_counter(), time.thread_time()
        self.interp.invoke()
        self.invoke_cpu += time.thread_time() - c0
        invoke_ms = (time.perf_counter() - t0) * 1000.0
        scores = self.interp.get_tensor(self.out["index"])[0]
        if self.out["dtype"] != np.float32:
            qs, qz = self.out["quantization"]
            scores = (scores.astype(np.float32) - qz) * qs
        top = np.argsort(scores)[::-1][:3]
        payload = {
            "ts": time.time(),
            "frame": i,
            "model": self.name,
            "latency_ms": {"invoke": round(invoke_ms, 3)},
            "top": [{"index": int(j), "label": self.labels[j], "score": round(float(scores[j]), 4)} for j in top],
        }
        self.client.publish("bench/naive/results", json.dumps(payload), qos=0)

    def run(self, frames: list[np.ndarray], n: int) -> Run:
        for i in range(10):
            self.frame(i, frames[i % len(frames)])
        self.invoke_cpu = 0.0
        p0, w0 = time.process_time(), time.perf_counter()
        for i in range(n):
            self.frame(i, frames[i % len(frames)])
        wall = time.perf_counter() - w0
        cpu = time.process_time() - p0
        return Run(n / wall, max(cpu - self.invoke_cpu, 0.0) / n * 1e6)

    def allocated(self, frames: list[np.ndarray], n: int) -> tuple[float, int]:
        for i in range(10):
            self.frame(i, frames[i % len(frames)])
        tracemalloc.start()
        mark = tracemalloc.get_traced_memory()[0]
        first = mark
        peaks: list[int] = []
        for i in range(n):
            tracemalloc.reset_peak()
            self.frame(i, frames[i % len(frames)])
            current, peak = tracemalloc.get_traced_memory()
            peaks.append(peak - mark)
            mark = current
        tracemalloc.stop()
        return (mark - first) / n, int(statistics.median(peaks))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ---- one model, one frame size ----------------------------------------------------------------
def window_run(w: Window) -> Run:
    assert w.start is not None and w.end is not None, f"the agent gave only {w.results} results"
    d = w.end - w.start
    return Run(w.results / d.wall, max(d.process_cpu - d.invoke_cpu, 0.0) / w.results * 1e6)


def bench_case(
    case: ModelCase, size_name: str, broker: LocalBroker, tmp: str, args: argparse.Namespace
) -> dict[str, Any]:
    frames = decoded_frames(case, SIZES[size_name])
    n = args.frames if case.name.startswith("mobilenet") else args.digits_frames
    live_n = int(args.camera_fps * args.live_seconds)
    state = Path(tmp) / f"{case.name}-{size_name}"
    counter = [0]

    def cfg() -> AgentConfig:
        counter[0] += 1
        return agent_config(case, broker.port, str(state / str(counter[0])), f"{case.name}-{size_name}")

    bare_model = load_model(cfg().model)
    naive = Naive(case, broker.port)
    runs: dict[str, list[Run]] = {"bare": [], "agent": [], "naive": []}
    stage_lists: dict[str, list[float]] = {}
    c2p: list[float] = []
    live_invoke: list[float] = []

    def do_bare() -> None:
        b = bare_loop(bare_model, n)
        runs["bare"].append(Run(b.fps, b.cpu_outside_us))

    def do_agent() -> None:
        w = run_agent(cfg(), frames=n, warmup=20, source_factory=lambda: DecodedSource(frames))
        runs["agent"].append(window_run(w))
        for s, v in w.stages.items():
            stage_lists.setdefault(s, []).extend(v)

    def do_naive() -> None:
        runs["naive"].append(naive.run(frames, n))

    def do_live() -> None:
        w = run_agent(
            cfg(), frames=live_n, warmup=10, source_factory=lambda: DecodedSource(frames, fps=args.camera_fps)
        )
        c2p.extend(w.capture_to_publish)
        live_invoke.extend(w.stages["invoke"])

    modes: list[Callable[[], None]] = [do_bare, do_agent, do_naive, do_live]
    try:
        for r in range(args.rounds):
            k = r % len(modes)
            for m in modes[k:] + modes[:k]:
                m()
        traced = run_agent(cfg(), frames=200, warmup=20, trace_alloc=True, source_factory=lambda: DecodedSource(frames))
        naive_net, naive_peak = naive.allocated(frames, 50)
    finally:
        naive.close()
    best = {k: max(x.fps for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x.cpu_outside_us for x in v) for k, v in runs.items()}
    peaks = traced.alloc_peak[1:]
    inv99 = percentiles(live_invoke)["p99_ms"]
    bound = inv99 + 1000.0 / args.camera_fps + SLACK_MS
    return {
        "model": case.name,
        "frame": size_name,
        "fps": {k: round(v, 1) for k, v in best.items()},
        "fps_rounds": {k: [round(x.fps, 1) for x in v] for k, v in runs.items()},
        "agent_over_bare": round(best["agent"] / best["bare"], 4),
        "naive_over_bare": round(best["naive"] / best["bare"], 4),
        "cpu_outside_us": {k: round(v, 1) for k, v in cpu.items()},
        "cpu_agent_over_naive": round(cpu["agent"] / cpu["naive"], 3) if cpu["naive"] else 0.0,
        "stages_p50_ms": {s: percentiles(v)["p50_ms"] for s, v in stage_lists.items()},
        "stages_p99_ms": {s: percentiles(v)["p99_ms"] for s, v in stage_lists.items()},
        "live": {
            "camera_fps": args.camera_fps,
            "frames": len(c2p),
            "capture_to_publish_p99_ms": percentiles(c2p)["p99_ms"],
            "capture_to_publish_p50_ms": percentiles(c2p)["p50_ms"],
            "invoke_p99_ms": inv99,
            "bound_ms": round(bound, 3),
            "within": percentiles(c2p)["p99_ms"] <= bound,
        },
        "alloc": {
            "agent_net_per_frame": round((traced.alloc_net[-1] - traced.alloc_net[0]) / (len(traced.alloc_net) - 1), 1),
            "agent_held_p50": int(statistics.median(peaks)),
            "naive_net_per_frame": round(naive_net, 1),
            "naive_held_p50": naive_peak,
        },
    }


def print_tables(rows: list[dict[str, Any]], settings: str) -> None:
    print(settings)
    print(
        f"{'model':<27} {'frame':>8} {'bare':>8} {'agent':>8} {'naive':>8} {'ag/bare':>8} {'nv/bare':>8} "
        f"{'cpu ag µs':>9} {'cpu nv µs':>9} {'ag/nv':>6} {'c2p p99':>8} {'bound':>7} "
        f"{'alloc ag B':>10} {'alloc nv B':>10}"
    )
    for r in rows:
        f, c, lv, a = r["fps"], r["cpu_outside_us"], r["live"], r["alloc"]
        print(
            f"{r['model']:<27} {r['frame']:>8} {f['bare']:>8.1f} {f['agent']:>8.1f} {f['naive']:>8.1f} "
            f"{r['agent_over_bare']:>8.3f} {r['naive_over_bare']:>8.3f} {c['agent']:>9.1f} {c['naive']:>9.1f} "
            f"{r['cpu_agent_over_naive']:>6.2f} {lv['capture_to_publish_p99_ms']:>8.2f} {lv['bound_ms']:>7.2f} "
            f"{a['agent_held_p50']:>10} {a['naive_held_p50']:>10}"
        )
    print()
    print("fps per round (bare / agent / naive):")
    for r in rows:
        fr = r["fps_rounds"]
        print(f"  {r['model']:<27} {r['frame']:>8}  {fr['bare']}  {fr['agent']}  {fr['naive']}")
    print()
    stages = list(rows[0]["stages_p50_ms"]) if rows else []
    print("agent per-stage p50 / p99 ms; allocation net B/frame (agent, naive):")
    print(f"{'model':<27} {'frame':>8} " + " ".join(f"{s:>17}" for s in stages) + f" {'net ag':>7} {'net nv':>8}")
    for r in rows:
        cells = " ".join(f"{r['stages_p50_ms'][s]:>8.3f}/{r['stages_p99_ms'][s]:<8.3f}" for s in stages)
        a = r["alloc"]
        print(
            f"{r['model']:<27} {r['frame']:>8} {cells} {a['agent_net_per_frame']:>7.0f} {a['naive_net_per_frame']:>8.0f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300, help="frames per round, mobilenet")
    ap.add_argument("--digits-frames", type=int, default=2000, help="frames per round, digits models")
    ap.add_argument("--camera-fps", type=float, default=30.0, help="the live mode's frame rate")
    ap.add_argument("--live-seconds", type=float, default=4.0, help="the live mode's length per round")
    ap.add_argument("--models", default="mobilenet,digits_uint8,digits_float")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wanted = [m for m in args.models.split(",") if m]
    all_cases = cases()
    if "mobilenet" in wanted and not all_cases["mobilenet"].path.is_file():
        print(
            f"skipped mobilenet: {CORAL} not found (the Coral test data lives in shared/testdata beside the repository)"
        )
        wanted.remove("mobilenet")
    broker = start_mosquitto(free_port())
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
            for m in wanted:
                for size in args.sizes.split(","):
                    rows.append(bench_case(all_cases[m], size, broker, tmp, args))
                    if not args.json:
                        print(f"  done: {m} {size}", file=sys.stderr, flush=True)
    finally:
        broker.stop()
    settings = (
        f"ai-edge-litert, threads = 1 in all modes, linear interpolation, frames decoded before the run, "
        f"mosquitto on loopback, results QoS 0, {args.rounds} interleaved rounds "
        f"({args.frames} frames mobilenet, {args.digits_frames} digits), live mode at {args.camera_fps:g} fps, "
        f"{threading.active_count()} threads at the end"
    )
    if args.json:
        print(json.dumps({"settings": settings, "rows": rows}))
    else:
        print_tables(rows, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
