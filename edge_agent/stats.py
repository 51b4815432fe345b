"""Health figures for the retained `stats` topic: fps, per-stage p50/p99, counters, RSS."""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np


def rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_temperature_c() -> float | None:
    # the Pi (and most Linux boards) expose the SoC temperature here, in millidegrees
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


class Stats:
    def __init__(self, window: int = 512) -> None:
        self.started = time.monotonic()
        self.frames = 0
        self.results = 0
        self.faults: dict[str, int] = {}
        self.dropped = 0
        self.features: dict[str, dict[str, int]] = {}
        self._stages: dict[str, deque[float]] = {}
        self._window = window
        self._fps_mark = (time.monotonic(), 0)

    def record(self, latency_ms: dict[str, float]) -> None:
        for stage, ms in latency_ms.items():
            self._stages.setdefault(stage, deque(maxlen=self._window)).append(ms)

    def count(self, what: str, names: tuple[str, ...]) -> None:
        """Per-feature counters, e.g. count("imputed", ("bmi",))."""
        table = self.features.setdefault(what, {})
        for n in names:
            table[n] = table.get(n, 0) + 1

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + n

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        now = time.monotonic()
        t0, n0 = self._fps_mark
        fps = (self.frames - n0) / (now - t0) if now > t0 else 0.0
        self._fps_mark = (now, self.frames)
        stages = {
            s: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
            for s, v in self._stages.items()
            if v
        }
        return {
            "ts": round(time.time(), 3),
            "uptime_s": round(now - self.started, 1),
            "fps": round(fps, 2),
            "frames": self.frames,
            "results": self.results,
            "dropped_frames": self.dropped,
            "faults": dict(self.faults),
            **{what: dict(table) for what, table in self.features.items()},
            "stages": stages,
            "rss_mb": rss_mb(),
            "cpu_temp_c": cpu_temperature_c(),
            **extra,
        }
