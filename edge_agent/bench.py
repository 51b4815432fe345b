"""`edge-agent bench`: the configured pipeline, timed, against a bare `invoke()` loop in the same run.

The agent runs as `edge-agent run` would (its loop, capture thread, guard and MQTT link), with
three differences: its state_dir is a temporary folder (the device's outbox and applied updates
are left alone), its device id gets a `-bench` suffix (the device's consumers are not fed
benchmark results) and Home Assistant discovery and /metrics are off. When the configured broker
does not answer, a mosquitto is started on loopback for the run (and said so).

Measured after `warmup` results, over `frames` results:
  stages        p50/p99 ms of capture wait (the loop waiting in take() for the frame), preprocess,
                invoke, guard, postprocess (the pipeline's own marks) and publish (the result's
                payload, the outbox or the link's publish)
  capture→publish  from the frame's capture stamp to the end of its publish
  fps           results per second of wall time; the bare loop's invoke()s per second, same
                model, same threads (run before and after the agent, the faster kept); their ratio
  cpu outside invoke  per frame: CPU time of the agent's loop thread minus its CPU time inside
                invoke() (threads = 1: invoke runs on that thread), and of the whole process
                (capture and MQTT threads too) minus the same
  allocated     a second, shorter pass under tracemalloc: bytes still held per frame (a leak)
                and the most held at once within a frame above its start, median and max
  rss           MB at the window's start and end
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.broker import LocalBroker, free_port, port_answers, start_mosquitto
from edge_agent.config import AgentConfig
from edge_agent.core.lease import Lease
from edge_agent.pipeline import Inference
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.sources.base import Frame, FrameSource
from edge_agent.stats import rss_mb

log = logging.getLogger(__name__)

STAGES = ("capture_wait", "preprocess", "invoke", "guard", "postprocess", "publish")
DEFAULT_TIMEOUT_S = 600.0


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    a = np.asarray(values)
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4)}


@dataclass
class Marks:
    """Clocks read at one result: the window is between two of these."""

    wall: float
    process_cpu: float
    loop_cpu: float
    invoke_cpu: float
    invoke_wall: float
    rss_mb: float

    def __sub__(self, other: Marks) -> Marks:
        return Marks(
            self.wall - other.wall,
            self.process_cpu - other.process_cpu,
            self.loop_cpu - other.loop_cpu,
            self.invoke_cpu - other.invoke_cpu,
            self.invoke_wall - other.invoke_wall,
            self.rss_mb - other.rss_mb,
        )


@dataclass
class Window:
    """What one timed run of the agent measured."""

    results: int = 0
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    capture_to_publish: list[float] = field(default_factory=list)
    start: Marks | None = None
    end: Marks | None = None
    alloc_net: list[int] = field(default_factory=list)  # tracemalloc current at each result
    alloc_peak: list[int] = field(default_factory=list)  # peak within each frame above its start


class BenchAgent(Agent):
    """The real agent with clocks around capture, invoke and publish; stops after warmup + frames results.

    `source_factory` replaces the configured source (benchmarks feed frames decoded beforehand);
    `live` picks the capture policy for it, as the agent does for cameras ("latest") or files ("every")."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        frames: int,
        warmup: int,
        trace_alloc: bool = False,
        source_factory: Callable[[], FrameSource] | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(cfg, on_result=on_result, source_factory=source_factory)
        self.frames, self.warmup, self.trace_alloc = frames, warmup, trace_alloc
        self.window = Window()
        self.done = threading.Event()
        self._wait_s = 0.0
        self._last_wait_s = 0.0
        self._invoke_cpu = 0.0
        self._invoke_wall = 0.0
        self._n = 0
        self._wrapped: set[int] = set()
        self._frame_mark = 0
        self._time_take()
        self._time_publish()

    # ---- the clocks -----------------------------------------------------------------------
    def _marks(self) -> Marks:
        return Marks(
            time.perf_counter(),
            time.process_time(),
            time.thread_time(),
            self._invoke_cpu,
            self._invoke_wall,
            rss_mb(),
        )

    def _time_take(self) -> None:
        take = self.sources.take

        def timed(timeout: float) -> Any:
            t0 = time.perf_counter()
            try:
                return take(timeout)
            finally:
                self._wait_s += time.perf_counter() - t0

        self.sources.take = timed  # type: ignore[method-assign,assignment]

    def _time_publish(self) -> None:
        publish = self.publisher.publish_result

        def timed(frame: Frame, inf: Inference, pipeline: Any) -> None:
            t0 = time.perf_counter()
            publish(frame, inf, pipeline)
            self._published(frame, inf, t0, time.perf_counter())

        self.publisher.publish_result = timed  # type: ignore[method-assign]

    def _time_invoke(self, model: Any) -> None:
        if id(model) in self._wrapped:
            return
        self._wrapped.add(id(model))
        invoke = model.invoke

        def timed() -> None:
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                invoke()
            finally:
                self._invoke_cpu += time.thread_time() - c0
                self._invoke_wall += time.perf_counter() - w0

        model.invoke = timed

    def _handle(self, lease: Lease) -> None:
        # the wait that ended with this frame (timeouts that returned nothing included)
        self._last_wait_s, self._wait_s = self._wait_s, 0.0
        if self.pipeline is not None:
            self._time_invoke(self.pipeline.model)
        super()._handle(lease)

    def _published(self, frame: Frame, inf: Inference, t0: float, t1: float) -> None:
        self._n += 1
        w = self.window
        if self._n == self.warmup:
            if self.trace_alloc:
                tracemalloc.start()
                self._frame_mark = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            w.start = self._marks()
            return
        if self._n <= self.warmup or w.end is not None:
            return
        w.results += 1
        lat = inf.latency_ms
        w.stages["capture_wait"].append(self._last_wait_s * 1000.0)
        for s in ("preprocess", "invoke", "guard", "postprocess"):
            w.stages[s].append(float(lat.get(s, 0.0)))
        w.stages["publish"].append((t1 - t0) * 1000.0)
        w.capture_to_publish.append((time.monotonic() - frame.mono) * 1000.0)
        if self.trace_alloc:
            current, peak = tracemalloc.get_traced_memory()
            w.alloc_net.append(current)
            w.alloc_peak.append(peak - self._frame_mark)
            self._frame_mark = current
            tracemalloc.reset_peak()
        if self._n >= self.warmup + self.frames:
            w.end = self._marks()
            if self.trace_alloc:
                tracemalloc.stop()
            self.done.set()
            self.stop()


def run_agent(
    cfg: AgentConfig,
    *,
    frames: int,
    warmup: int,
    trace_alloc: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    source_factory: Callable[[], FrameSource] | None = None,
) -> Window:
    """One timed run of the agent in a thread of this process; returns what it measured."""
    agent = BenchAgent(cfg, frames=frames, warmup=warmup, trace_alloc=trace_alloc, source_factory=source_factory)
    thread = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    thread.start()
    try:
        agent.done.wait(timeout_s)
    finally:
        agent.stop()
        thread.join(30)
        if tracemalloc.is_tracing() and trace_alloc:
            tracemalloc.stop()
    return agent.window


@dataclass
class Bare:
    fps: float
    invoke: dict[str, float]
    cpu_outside_us: float


def bare_loop(model: LoadedModel, frames: int, warmup: int = 10) -> Bare:
    """`interpreter.invoke()` back to back on one input: the interpreter's own limit."""
    interp = model.interpreter
    for _ in range(warmup):
        interp.invoke()
    times: list[float] = []
    cpu_in = 0.0
    p0, w0 = time.process_time(), time.perf_counter()
    for _ in range(frames):
        c, t = time.thread_time(), time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - t) * 1000.0)
        cpu_in += time.thread_time() - c
    wall = time.perf_counter() - w0
    cpu = time.process_time() - p0
    return Bare(frames / wall, percentiles(times), max(cpu - cpu_in, 0.0) / frames * 1e6)


def bench_config(cfg: AgentConfig, state_dir: str, *, host: str | None = None, port: int | None = None) -> AgentConfig:
    """The config as run by `bench`: a temporary state_dir, a `-bench` device id, no HA, no /metrics."""
    mqtt = cfg.mqtt if host is None else cfg.mqtt.model_copy(update={"host": host, "port": port, "tls": None})
    return cfg.model_copy(
        update={
            "device": cfg.device.model_copy(update={"id": f"{cfg.device.id}-bench", "state_dir": state_dir}),
            "mqtt": mqtt,
            "homeassistant": cfg.homeassistant.model_copy(update={"enabled": False}),
            "metrics": cfg.metrics.model_copy(update={"enabled": False}),
        }
    )


def summarize(w: Window, bare: Bare, frames_asked: int) -> dict[str, Any]:
    if w.start is None or w.end is None:
        raise RuntimeError(
            f"the agent gave only {w.results} of {frames_asked} results in time (a source that ends or is paced, "
            "a model that faults, or no model: see the log above)"
        )
    d = w.end - w.start
    n = max(w.results, 1)
    fps = n / d.wall if d.wall > 0 else 0.0
    out: dict[str, Any] = {
        "frames": w.results,
        "stages": {s: percentiles(v) for s, v in w.stages.items()},
        "capture_to_publish": percentiles(w.capture_to_publish),
        "fps": round(fps, 2),
        "bare_fps": round(bare.fps, 2),
        "ratio": round(fps / bare.fps, 4) if bare.fps else 0.0,
        "bare_invoke": bare.invoke,
        "invoke_wall_ms_per_frame": round(d.invoke_wall / n * 1000.0, 4),
        "cpu_outside_invoke_us": {
            "loop_thread": round(max(d.loop_cpu - d.invoke_cpu, 0.0) / n * 1e6, 1),
            "process": round(max(d.process_cpu - d.invoke_cpu, 0.0) / n * 1e6, 1),
            "bare_process": round(bare.cpu_outside_us, 1),
        },
        "rss_mb": {"start": w.start.rss_mb, "end": w.end.rss_mb},
    }
    return out


def alloc_summary(w: Window) -> dict[str, Any]:
    if len(w.alloc_net) < 2:
        return {"frames": 0, "net_bytes_per_frame": 0.0, "peak_bytes_p50": 0, "peak_bytes_max": 0}
    net = (w.alloc_net[-1] - w.alloc_net[0]) / (len(w.alloc_net) - 1)
    peaks = w.alloc_peak[1:]
    return {
        "frames": len(w.alloc_net),
        "net_bytes_per_frame": round(net, 1),
        "peak_bytes_p50": int(np.percentile(peaks, 50)),
        "peak_bytes_max": int(max(peaks)),
    }


def run_bench(
    cfg: AgentConfig, *, frames: int, warmup: int = 20, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """The whole `bench` run; the returned dict is what --json prints."""
    broker: LocalBroker | None = None
    notes: list[str] = []
    host, port = cfg.mqtt.host, cfg.mqtt.port
    if not port_answers(host, port):
        try:
            broker = start_mosquitto(free_port())
        except RuntimeError as err:
            notes.append(
                f"the broker {host}:{port} does not answer and no local one could be started ({err}): "
                "results are published into a disconnected link"
            )
        else:
            notes.append(
                f"the broker {host}:{port} does not answer: publishing to a mosquitto started on "
                f"127.0.0.1:{broker.port} for this run"
            )
    if cfg.source.fps:
        notes.append(f"source.fps = {cfg.source.fps:g} paces the agent: its fps is not the pipeline's limit")
    try:
        with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
            over = {"host": "127.0.0.1", "port": broker.port} if broker is not None else {}
            run_cfg = bench_config(cfg, str(Path(tmp) / "timed"), **over)  # type: ignore[arg-type]
            model = load_model(run_cfg.model)
            before = bare_loop(model, max(frames, 50))
            window = run_agent(run_cfg, frames=frames, warmup=warmup, timeout_s=timeout_s)
            trace_cfg = bench_config(cfg, str(Path(tmp) / "traced"), **over)  # type: ignore[arg-type]
            traced = run_agent(trace_cfg, frames=min(frames, 200), warmup=warmup, trace_alloc=True, timeout_s=timeout_s)
            after = bare_loop(model, max(frames, 50))
            bare = max(before, after, key=lambda b: b.fps)  # the less disturbed of the two
            del model
    finally:
        if broker is not None:
            broker.stop()
    out = summarize(window, bare, frames)
    out["allocated"] = alloc_summary(traced)
    out["settings"] = {
        "model": Path(cfg.model.path).name,
        "threads": cfg.model.threads,
        "interpreter": cfg.model.interpreter,
        "isolation": getattr(cfg.model, "isolation", "inline"),
        "source": cfg.source.kind,
        "broker": f"127.0.0.1:{broker.port} (started)" if broker is not None else f"{host}:{port}",
        "results_qos": cfg.mqtt.results_qos,
        "persist_results": cfg.mqtt.persist_results,
    }
    out["notes"] = notes
    return out


def format_report(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [
        f"model {s['model']} ({s['interpreter']}, threads {s['threads'] or 'default'}, {s['isolation']}), "
        f"source {s['source']}, broker {s['broker']}, results QoS {s['results_qos']}",
        *(f"note: {n}" for n in r["notes"]),
        f"{r['frames']} frames after the warm-up",
        f"{'stage':<20} {'p50 ms':>9} {'p99 ms':>9}",
    ]
    for name, p in r["stages"].items():
        lines.append(f"{name:<20} {p['p50_ms']:>9.3f} {p['p99_ms']:>9.3f}")
    c = r["capture_to_publish"]
    lines.append(f"{'capture→publish':<20} {c['p50_ms']:>9.3f} {c['p99_ms']:>9.3f}")
    b = r["bare_invoke"]
    lines.append(f"{'bare invoke':<20} {b['p50_ms']:>9.3f} {b['p99_ms']:>9.3f}")
    cpu = r["cpu_outside_invoke_us"]
    a = r["allocated"]
    lines += [
        f"fps: agent {r['fps']:.2f}, bare invoke loop {r['bare_fps']:.2f}, ratio {r['ratio']:.3f}",
        f"CPU outside invoke per frame: loop thread {cpu['loop_thread']:.1f} µs, whole process "
        f"{cpu['process']:.1f} µs (bare loop {cpu['bare_process']:.1f} µs)",
        f"allocated per frame (tracemalloc, {a['frames']} frames): net {a['net_bytes_per_frame']:.0f} B, "
        f"held at once p50 {a['peak_bytes_p50']} B, max {a['peak_bytes_max']} B",
        f"RSS: {r['rss_mb']['start']:.1f} MB → {r['rss_mb']['end']:.1f} MB",
    ]
    return lines


def to_json(r: dict[str, Any]) -> str:
    return json.dumps(r)
