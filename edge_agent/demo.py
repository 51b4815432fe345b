"""`edge-agent demo`: the bundled digits model on bundled frames, results live over MQTT.

The results shown are read back from the broker, so what the terminal prints is what a
subscriber on the network would see.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.broker import LocalBroker, free_port, port_answers, start_local_broker
from edge_agent.config import parse_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def bundled_dir() -> Path:
    return Path(str(resources.files("edge_agent") / "bundled"))


def demo_config(*, state_dir: str, port: int, protocol: str, model: str = "uint8", fps: float = 10.0) -> dict[str, Any]:
    b = bundled_dir()
    return {
        "device": {"id": "demo", "state_dir": state_dir},
        "source": {"kind": "images", "path": str(b / "digits_frames"), "loop": True, "fps": fps},
        "model": {
            "path": str(b / f"digits_{model}.tflite"),
            "labels": str(b / "digits_labels.txt"),
            "task": "classification",
        },
        "preprocess": {
            "resize": "stretch",
            "color": "rgb",
            "scale": 1 / 255,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        "postprocess": {"top_k": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "protocol": protocol, "topic_prefix": "edge"},
        "service": {"stats_interval_s": 5},
    }


class _Viewer:
    """Subscribes to the demo's topics and prints each result as one line."""

    def __init__(self, port: int, protocol: str) -> None:
        self.count = 0
        self.correct = 0
        self.first_at: float | None = None
        self._t0 = time.monotonic()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="edge-agent-demo-viewer",
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, *_: c.subscribe([("edge/demo/results", 0), ("edge/demo/events", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        if msg.topic.endswith("/events"):
            print(f"event  {data['kind']}: {data['message']}", flush=True)
            return
        self.count += 1
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now - self._t0
        src = data["frame"]["source"]
        top = data["top"][0] if data["top"] else {"label": "-", "score": 0.0, "index": -1}
        truth = src.rsplit("_", 1)[-1].split(".")[0]
        ok = str(top["index"]) == truth
        self.correct += ok
        fps = self.count / max(now - self._t0 - (self.first_at or 0), 1e-6) if self.count > 1 else 0.0
        print(
            f"frame {data['frame']['seq']:5d} {src:12s} → {top['label']:6s} {top['score']:.3f}  "
            f"{'✓' if ok else '✗ (truth ' + truth + ')'}  invoke {data['latency_ms']['invoke']:6.2f} ms  "
            f"total {data['latency_ms']['total']:6.2f} ms  {fps:5.1f} fps",
            flush=True,
        )

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_demo(*, seconds: float | None, port: int = 1883, model: str = "uint8") -> int:
    logging.getLogger().setLevel(logging.WARNING)
    broker: LocalBroker | None = None
    protocol = "5"
    if port_answers("127.0.0.1", port):
        print(f"using the MQTT broker already on localhost:{port}", flush=True)
        protocol = "3.1.1"  # works with any broker, whichever version it speaks
    else:
        broker = start_local_broker(port if port else free_port())
        port, protocol = broker.port, broker.protocol
        print(f"started {broker.kind} on localhost:{port} (MQTT {protocol})", flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as state:
        cfg = parse_config(demo_config(state_dir=state, port=port, protocol=protocol, model=model))
        print(
            f"model {Path(cfg.model.path).name} on {Path(cfg.source.path or '').name}/ — subscribe with: "
            f"mosquitto_sub -p {port} -t 'edge/demo/#' -v   (Ctrl-C stops)",
            flush=True,
        )
        viewer = _Viewer(port, protocol)
        agent = Agent(cfg)
        thread = threading.Thread(target=agent.run, name="agent", daemon=True)
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        thread.start()
        try:
            stop.wait(seconds)
        finally:
            signal.signal(signal.SIGINT, previous)
            agent.stop()
            thread.join(10)
            time.sleep(0.2)
            viewer.stop()
            if broker is not None:
                broker.stop()
    if viewer.count:
        print(
            f"{viewer.count} results, {viewer.correct / viewer.count:.1%} correct; first result "
            f"{viewer.first_at:.1f} s after start",
            flush=True,
        )
    else:
        print("no results were received", flush=True)
        return 1
    return 0
