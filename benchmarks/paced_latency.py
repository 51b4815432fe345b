"""How late a paced source's results are, read from the payloads themselves.

    python benchmarks/paced_latency.py [--frames N] [--json]

The bundled digits model on its bundled frames (as `edge-agent demo` runs it), against a real
mosquitto on a free port, with `source.fps` set, overlap on and off. For each result received:
  lag    = payload `ts` − `frame.ts`: from the moment the agent took the frame to the result
  slack  = `latency_ms.total` − `latency_ms.invoke`: what the agent adds around the invoke
Baseline, measured in the same run: the frame interval (1 / fps). Before the fix a paced
frame's result waited for the next frame's slot, so lag p99 was about one interval or more
(752 ms at 4 fps); the ratio lag p99 / interval says how much of that is left.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.broker import free_port, start_mosquitto
from edge_agent.config import parse_config
from edge_agent.demo import demo_config


def run(port: int, *, fps: float, overlap: bool, frames: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(json.loads(msg.payload))
        if len(got) >= frames:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edge/demo/results", qos=0)
    sub.loop_start()
    with tempfile.TemporaryDirectory(prefix="paced-") as state:
        doc = demo_config(state_dir=state, port=port, protocol="5", fps=fps)
        doc["source"].update({"max_frames": frames, "exit_when_done": True})
        doc["model"]["overlap"] = overlap
        agent = Agent(parse_config(doc))
        agent.run()
    done.wait(5.0)
    sub.loop_stop()
    sub.disconnect()
    return got


def figures(results: list[dict[str, Any]]) -> dict[str, float]:
    lag = np.array([(r["ts"] - r["frame"]["ts"]) * 1000.0 for r in results])
    slack = np.array([r["latency_ms"]["total"] - r["latency_ms"]["invoke"] for r in results])
    invoke = np.array([r["latency_ms"]["invoke"] for r in results])
    return {
        "results": len(results),
        "lag_p50_ms": float(np.percentile(lag, 50)),
        "lag_p99_ms": float(np.percentile(lag, 99)),
        "total_minus_invoke_p99_ms": float(np.percentile(slack, 99)),
        "invoke_p50_ms": float(np.percentile(invoke, 50)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per run (default 100)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    broker = start_mosquitto(free_port())
    rows = []
    try:
        for fps in (4.0, 10.0):
            for overlap in (True, False):
                res = run(broker.port, fps=fps, overlap=overlap, frames=args.frames)
                f = figures(res)
                interval = 1000.0 / fps
                rows.append(
                    {
                        "fps": fps,
                        "overlap": overlap,
                        "interval_ms": interval,
                        **f,
                        "lag_p99_over_interval": f["lag_p99_ms"] / interval,
                    }
                )
    finally:
        broker.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'fps':>4} {'overlap':>7} {'results':>7} {'lag p50':>9} {'lag p99':>9} {'p99/interval':>12} "
        f"{'total-invoke p99':>16} {'invoke p50':>10}"
    )
    for r in rows:
        print(
            f"{r['fps']:4.0f} {r['overlap']!s:>7} {r['results']:7d} {r['lag_p50_ms']:7.2f}ms "
            f"{r['lag_p99_ms']:7.2f}ms {r['lag_p99_over_interval']:12.3f} "
            f"{r['total_minus_invoke_p99_ms']:14.2f}ms {r['invoke_p50_ms']:8.2f}ms"
        )


if __name__ == "__main__":
    main()
