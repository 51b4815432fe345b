"""Frame sources over a long run: memory growth, capture cost per frame, the capture thread's overhead.

    python benchmarks/sources.py [--frames N] [--kinds synthetic,csv,...] [--json]

On a Pi: run it from the checkout with the agent's venv, e.g.
`.venv/bin/python benchmarks/sources.py --kinds synthetic,csv` (seconds) or with all kinds
(opencv and images decode a 640×480 JPEG per frame: ~10 minutes for 100,000 frames on a Pi 4).

For each kind it writes its input into a temporary folder first and loops over it:
  synthetic         640×480 noise
  synthetic-latest  the same through the "latest" policy of live sources (cameras, streams)
  opencv            an MJPG .avi, 640×480, 300 frames, written with cv2.VideoWriter
  csv               1,000 rows of 3 sensor values
  wav               10 s of 16 kHz mono int16 cut into 0.975 s windows (15,600 samples, as YAMNet takes)
  images            a folder of 5 JPEGs, 640×480
The source is opened with `open_source` and wrapped in a `CaptureThread` as the agent does
("latest" for live sources, "every" otherwise), and --frames frames are taken and released
after --warmup frames. Printed per kind:
  RSS start/end  MB after the warm-up and after the last frame, and the growth (target < 1 MB)
  capture CPU    µs of CPU of the capture thread per frame it read (/proc/self/task/TID/stat)
  consumer CPU   µs of CPU of the taking thread per frame taken
  wall           µs per frame taken
  skipped        frames replaced by newer ones before they were taken ("latest")
  bare CPU/wall  the baseline, in the same run: source.read() + release() in one thread, no
                 capture thread (--baseline-frames frames)
  cpu ratio      (capture + consumer CPU) / bare CPU: what the capture thread costs on top
  net kB         memory still held after a shorter traced pass (tracemalloc, --trace-frames
                 frames; a leak shows here, so does a frame in flight at either end: ±1 frame's
                 buffers is not a leak), and peak kB the most held at once above the start
tracemalloc does not see allocations inside OpenCV or FFmpeg: the RSS figures do. The clock
ticks of /proc are 10 ms, so capture CPU needs a few thousand frames to mean anything. Other
work on the machine shows in wall time, not much in CPU time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.config import SourceConfig
from edge_agent.sources import Frame, FrameSource, open_source
from edge_agent.sources.capture import CaptureThread

KINDS = ("synthetic", "synthetic-latest", "opencv", "csv", "wav", "images")
WIDTH, HEIGHT = 640, 480
VIDEO_FRAMES = 300
CSV_ROWS = 1000
WAV_RATE, WAV_SECONDS, WAV_WINDOW = 16000, 10, 15600
IMAGES = 5
TAKE_WAIT_S = 0.05  # as the agent's loop
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """As edge_agent.stats.rss_mb, unrounded."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def thread_cpu_s(native_id: int) -> float:
    """utime + stime of one thread of this process, in seconds (10 ms ticks)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


# ---- the inputs -------------------------------------------------------------------------------
def picture(i: int) -> np.ndarray:
    """A 640×480 frame that JPEG compresses like a camera's: shapes, text and some noise."""
    rng = np.random.default_rng(i)
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = (np.arange(WIDTH, dtype=np.uint16)[None, :, None] * 255 // WIDTH).astype(np.uint8)
    cv2.circle(img, (100 + 3 * i % 440, 240), 80, (40, 200, 90), -1)
    cv2.putText(img, f"frame {i}", (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    noise = rng.integers(-12, 13, img.shape, dtype=np.int16)
    out: np.ndarray = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def write_inputs(folder: Path, kinds: list[str]) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if "opencv" in kinds:
        video = folder / "clip.avi"
        writer = cv2.VideoWriter(str(video), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (WIDTH, HEIGHT))
        assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
        for i in range(VIDEO_FRAMES):
            writer.write(picture(i))
        writer.release()
        paths["opencv"] = video
    if "csv" in kinds:
        rng = np.random.default_rng(0)
        rows = ["temperature,humidity,pressure"]
        rows += [
            f"{20 + rng.normal():.3f},{50 + 5 * rng.normal():.2f},{1013 + rng.normal():.1f}" for _ in range(CSV_ROWS)
        ]
        paths["csv"] = folder / "rows.csv"
        paths["csv"].write_text("\n".join(rows) + "\n")
    if "wav" in kinds:
        t = np.arange(WAV_RATE * WAV_SECONDS) / WAV_RATE
        samples = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
        paths["wav"] = folder / "tone.wav"
        with wave.open(str(paths["wav"]), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(WAV_RATE)  # at the model's rate: no resampling, soxr not needed
            w.writeframes(samples.tobytes())
    if "images" in kinds:
        paths["images"] = folder / "images"
        paths["images"].mkdir()
        for i in range(IMAGES):
            cv2.imwrite(str(paths["images"] / f"{i:03d}.jpg"), picture(i * 50), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def opener(kind: str, paths: dict[str, Path]) -> tuple[Callable[[], FrameSource], str | None]:
    """How to open the kind's source as the agent does, and the policy forced on it (None: as the agent picks)."""
    if kind in ("synthetic", "synthetic-latest"):
        cfg = SourceConfig(kind="synthetic", width=WIDTH, height=HEIGHT, pattern="noise")
        return (lambda: open_source(cfg)), ("latest" if kind == "synthetic-latest" else None)
    if kind == "wav":
        cfg = SourceConfig(kind="wav", path=str(paths["wav"]), loop=True, wav_sample_rate=WAV_RATE)
        return (lambda: open_source(cfg, input_length=WAV_WINDOW)), None
    cfg = SourceConfig(kind=kind, path=str(paths[kind]), loop=True)  # type: ignore[arg-type]
    return (lambda: open_source(cfg)), None


def policy_of(src: FrameSource, forced: str | None) -> str:
    # as Agent._try_open_source: live sources (cameras, streams) keep the newest frame
    return forced or ("latest" if getattr(src, "live", False) else "every")


# ---- the passes -------------------------------------------------------------------------------
def bare(open_src: Callable[[], FrameSource], frames: int, warmup: int) -> dict[str, float]:
    """The baseline: read() and release() in this thread, no capture thread."""
    src = open_src()
    try:
        taken = 0
        t0 = c0 = 0.0
        while taken < warmup + frames:
            if taken == warmup:
                t0, c0 = time.perf_counter(), time.thread_time()
            item = src.read()
            if isinstance(item, Frame):
                taken += 1
                src.release(item)
            elif item is None:
                raise RuntimeError(f"{src.name} ended")
            del item
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        src.close()
    return {"bare_cpu_us": cpu / frames * 1e6, "bare_wall_us": wall / frames * 1e6}


def take_frames(cap: CaptureThread, n: int) -> None:
    """Take n frames and release each, as the agent's loop does (minus the model)."""
    taken = 0
    while taken < n:
        item = cap.take(TAKE_WAIT_S)
        if isinstance(item, Frame):
            taken += 1
            cap.release(item)
        elif item is None:
            raise RuntimeError(f"{cap.name} ended")
        del item


def captured(
    open_src: Callable[[], FrameSource], forced: str | None, frames: int, warmup: int, progress: bool
) -> dict[str, Any]:
    src = open_src()
    policy = policy_of(src, forced)
    cap = CaptureThread(src, policy)  # type: ignore[arg-type]
    tid = cap._thread.native_id  # the benchmark reads the thread's CPU time from /proc
    assert tid is not None
    try:
        take_frames(cap, warmup)
        gc.collect()
        rss0, read0, skip0 = rss_mb(), _reads(src, cap), cap.skipped
        t0, c0, k0 = time.perf_counter(), time.thread_time(), thread_cpu_s(tid)
        step = max(frames // 5, 1)
        done = 0
        while done < frames:
            n = min(step, frames - done)
            take_frames(cap, n)
            done += n
            if progress and done < frames:
                print(f"  {src.name}: {done}/{frames} frames, RSS {rss_mb():.1f} MB", file=sys.stderr, flush=True)
        wall, cpu, kcpu = time.perf_counter() - t0, time.thread_time() - c0, thread_cpu_s(tid) - k0
        skipped = cap.skipped - skip0
        read = _reads(src, cap) - read0
        gc.collect()
        rss1 = rss_mb()
        extra = {"opencv_counters": dict(src.counters)} if hasattr(src, "counters") else {}
    finally:
        cap.close()
    return {
        "source": src.name,
        "policy": policy,
        "rss_start_mb": round(rss0, 2),
        "rss_end_mb": round(rss1, 2),
        "rss_growth_mb": round(rss1 - rss0, 2),
        "capture_cpu_us": kcpu / max(read, 1) * 1e6,
        "consumer_cpu_us": cpu / frames * 1e6,
        "wall_us": wall / frames * 1e6,
        "skipped": skipped,
        **extra,
    }


def _reads(src: FrameSource, cap: CaptureThread) -> int:
    """Frames the source delivered so far: taken + skipped + the one waiting (approximately)."""
    stamp = getattr(src, "_stamp", None)
    return int(stamp._seq) if stamp is not None else 0  # every source stamps each frame


def traced(open_src: Callable[[], FrameSource], forced: str | None, frames: int) -> dict[str, Any]:
    """Net memory held per frame after `frames` frames (a leak), and the peak, by tracemalloc."""
    src = open_src()
    cap = CaptureThread(src, policy_of(src, forced))  # type: ignore[arg-type]
    try:
        take_frames(cap, 200)
        gc.collect()
        tracemalloc.start()
        take_frames(cap, 100)
        gc.collect()
        first = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        take_frames(cap, frames)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        last = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        cap.close()
    ours = (tracemalloc.Filter(False, tracemalloc.__file__),)  # the snapshots themselves
    diff = last.filter_traces(ours).compare_to(first.filter_traces(ours), "lineno")
    top = [str(s) for s in diff[:3] if s.size_diff > 0]
    return {"net_kb": (current - before) / 1e3, "peak_kb": (peak - before) / 1e3, "top_growth": top}


def bench(
    kinds: list[str], frames: int, warmup: int, baseline_frames: int, trace_frames: int, progress: bool
) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        paths = write_inputs(Path(tmp), kinds)
        for kind in kinds:
            open_src, forced = opener(kind, paths)
            if progress:
                print(f"{kind}: baseline {baseline_frames} frames, then {frames} captured", file=sys.stderr, flush=True)
            base = bare(open_src, baseline_frames, min(warmup, 1000))
            cap = captured(open_src, forced, frames, warmup, progress)
            tr = traced(open_src, forced, trace_frames) if trace_frames else {}
            total = cap["capture_cpu_us"] + cap["consumer_cpu_us"]
            row = {"kind": kind, **cap, **base, **tr}
            row["cpu_ratio"] = total / base["bare_cpu_us"] if base["bare_cpu_us"] else float("nan")
            row["wall_ratio"] = cap["wall_us"] / base["bare_wall_us"] if base["bare_wall_us"] else float("nan")
            for k in ("capture_cpu_us", "consumer_cpu_us", "wall_us", "bare_cpu_us", "bare_wall_us"):
                row[k] = round(row[k], 1)
            for k in ("cpu_ratio", "wall_ratio"):
                row[k] = round(row[k], 2)
            for k in ("net_kb", "peak_kb"):
                if k in row:
                    row[k] = round(row[k], 1)
            rows.append(row)
    return {
        "frames": frames,
        "warmup": warmup,
        "baseline_frames": baseline_frames,
        "trace_frames": trace_frames,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "threads_at_end": threading.active_count(),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames taken per kind after the warm-up")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--baseline-frames", type=int, default=10_000, help="frames of the bare read()+release() loop")
    ap.add_argument("--trace-frames", type=int, default=2000, help="frames of the tracemalloc pass (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}: use {', '.join(KINDS)}")
    r = bench(kinds, args.frames, args.warmup, args.baseline_frames, args.trace_frames, progress=not args.json)
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"{r['frames']} frames per kind after {r['warmup']} warm-up; baseline {r['baseline_frames']} frames; "
        f"tracemalloc {r['trace_frames']} frames; {r['cpus']} CPUs, load average {r['load_avg']} at the end"
    )
    print(
        f"{'kind':>16} {'policy':>6} {'RSS start':>9} {'RSS end':>8} {'growth':>7} {'capt µs':>8} {'cons µs':>8} "
        f"{'wall µs':>8} {'skipped':>8} {'bare µs':>8} {'bare wall':>9} {'cpu ×':>6} {'wall ×':>6} "
        f"{'net kB':>8} {'peak kB':>8}"
    )
    for x in r["rows"]:
        flag = "" if x["rss_growth_mb"] < 1.0 else "  GROWTH ≥ 1 MB"
        print(
            f"{x['kind']:>16} {x['policy']:>6} {x['rss_start_mb']:>9.1f} {x['rss_end_mb']:>8.1f} "
            f"{x['rss_growth_mb']:>7.2f} {x['capture_cpu_us']:>8} {x['consumer_cpu_us']:>8} {x['wall_us']:>8} "
            f"{x['skipped']:>8} {x['bare_cpu_us']:>8} {x['bare_wall_us']:>9} {x['cpu_ratio']:>6} {x['wall_ratio']:>6} "
            f"{x.get('net_kb', '-'):>8} {x.get('peak_kb', '-'):>8}{flag}"
        )
    for x in r["rows"]:
        if x.get("top_growth") and x.get("net_kb", 0) > 100:
            print(f"{x['kind']}: where traced memory grew most:")
            for line in x["top_growth"]:
                print(f"    {line}")
    print("capt µs: CPU of the capture thread per frame read; cons µs: of the taking thread per frame taken;")
    print("cpu ×: (capt + cons) / bare CPU of read()+release() in one thread; wall ×: wall / bare wall")


if __name__ == "__main__":
    main()
