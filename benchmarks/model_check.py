"""What checking an untrusted model file costs at load: the static checks and the trial load.

    python benchmarks/model_check.py [--rounds N] [--json]

For the bundled digits model and mobilenet_v2_1.0_224_quant.tflite from ../shared/testdata/coral
(skipped with a message when absent): the Python verification of the flatbuffer (parse_model_bytes),
the trial load in a child process (build, allocate, invoke once on zeros), a cached trial (the same
file again), and the whole load_model() with and without the trial. Median of N rounds, in ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import ModelConfig
from edge_agent.runtime.backends import select_backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.tflite_file import parse_model_bytes
from edge_agent.runtime.trial import forget_verdicts, trial_load

REPO = Path(__file__).resolve().parents[1]
MODELS = [
    REPO / "edge_agent" / "bundled" / "digits_uint8.tflite",
    REPO.parent / "shared" / "testdata" / "coral" / "mobilenet_v2_1.0_224_quant.tflite",
]


def median_ms(fn: Callable[[], Any], rounds: int, before: Callable[[], Any] = lambda: None) -> float:
    times = []
    for _ in range(rounds):
        before()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def measure(path: Path, rounds: int) -> dict[str, Any]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    backend = select_backend("auto")

    def trial() -> None:
        trial_load(data, sha256=digest, name=path.name, interpreter=backend.name, version=backend.version)

    cfg = ModelConfig(path=str(path))
    return {
        "model": path.name,
        "bytes": len(data),
        "static_checks_ms": median_ms(lambda: parse_model_bytes(data), rounds),
        "trial_load_ms": median_ms(trial, rounds, before=forget_verdicts),
        "trial_cached_ms": median_ms(trial, rounds),
        "load_model_without_trial_ms": median_ms(lambda: load_model(cfg, backend=backend, trial=False), rounds),
        "load_model_first_time_ms": median_ms(lambda: load_model(cfg, backend=backend), rounds, before=forget_verdicts),
        "load_model_again_ms": median_ms(lambda: load_model(cfg, backend=backend), rounds),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for path in MODELS:
        if not path.exists():
            print(f"{path} not found: skipped", file=sys.stderr)
            continue
        rows.append(measure(path, args.rounds))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['model']} ({r['bytes']} bytes):")
        for k, v in r.items():
            if k.endswith("_ms"):
                print(f"  {k:32s} {v:9.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
