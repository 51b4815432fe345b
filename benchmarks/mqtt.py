"""Publishing throughput with and without the outbox, its cost per message, and how long a
10,000-event backlog takes to drain — against a real mosquitto started on a free port.

    python benchmarks/mqtt.py [--messages N] [--backlog N] [--json]

  direct   link.publish() of a ~300-byte result payload, QoS 0 (how live results go)
  outbox   the same payload through the outbox (SQLite WAL, synchronous=FULL) and its sender,
           QoS 1, each row removed on PUBACK (how events go, and results with persist_results)
  put      the outbox's own cost per message: the insert alone, no broker
  drain    a backlog of --backlog events queued while "disconnected", then sent: seconds
           until the broker acknowledged the last one
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_agent.broker import free_port, start_mosquitto
from edge_agent.config import MqttConfig
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.sender import OutboxSender
from edge_agent.mqtt.topics import Topics

PAYLOAD = {
    "ts": 1764000000.123,
    "frame": {"seq": 1, "ts": 1764000000.1, "source": "0001_2.png"},
    "model": {
        "name": "digits_uint8.tflite",
        "sha256": "2a71818da2c33c343f952fa59cef7e39f7c80c9291214c74e6854652a6a6ad72",
    },
    "latency_ms": {"preprocess": 0.2, "invoke": 0.3, "guard": 0.01, "postprocess": 0.02, "total": 0.6},
    "task": "classification",
    "top": [{"index": 2, "label": "two", "score": 0.996}],
}


def link_for(port: int, device: str) -> MqttLink:
    cfg = MqttConfig(host="127.0.0.1", port=port)
    link = MqttLink(cfg, Topics("bench", device), status_payload=lambda s: {"state": s})
    link.client.max_inflight_messages_set(100)
    link.client.max_queued_messages_set(0)
    link.start()
    assert link.wait_connected(10), "no broker"
    return link


def wait_empty(sender: OutboxSender, outbox: Outbox, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.pump()
        if sender.in_flight == 0 and outbox.depth().count == 0:
            return
        time.sleep(0.0005)
    raise TimeoutError("the outbox did not drain")


def bench(messages: int, backlog: int) -> dict[str, Any]:
    broker = start_mosquitto(free_port())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            link = link_for(broker.port, "direct")
            t0 = time.perf_counter()
            for i in range(messages):
                link.publish("bench/direct/results", {"seq": i, **PAYLOAD}, qos=0)
            direct_s = time.perf_counter() - t0
            link.stop()

            link = link_for(broker.port, "outbox")
            box = Outbox(Path(tmp) / "a" / "outbox.sqlite", max_bytes=512 * 1024 * 1024)
            sender = OutboxSender(box, link, window=100)
            t0 = time.perf_counter()
            for _ in range(messages):
                box.put("bench/outbox/results", lambda seq: {"seq": seq, **PAYLOAD}, qos=1, kind="result")
                sender.pump()
            wait_empty(sender, box)
            outbox_s = time.perf_counter() - t0

            quiet = Outbox(Path(tmp) / "b" / "outbox.sqlite", max_bytes=512 * 1024 * 1024)
            t0 = time.perf_counter()
            for _ in range(messages):
                quiet.put("bench/quiet/events", lambda seq: {"seq": seq, **PAYLOAD}, qos=1, kind="event")
            put_s = time.perf_counter() - t0
            quiet.close()

            # a backlog built while disconnected, then drained
            back = Outbox(Path(tmp) / "c" / "outbox.sqlite", max_bytes=512 * 1024 * 1024)
            for _ in range(backlog):
                back.put("bench/backlog/events", lambda seq: {"seq": seq, **PAYLOAD}, qos=1, kind="event")
            drainer = OutboxSender(back, link, window=100)
            t0 = time.perf_counter()
            wait_empty(drainer, back)
            drain_s = time.perf_counter() - t0
            db_bytes = (Path(tmp) / "c" / "outbox.sqlite").stat().st_size
            back.close()
            box.close()
            link.stop()
    finally:
        broker.stop()
    return {
        "messages": messages,
        "direct_per_s": round(messages / direct_s),
        "outbox_per_s": round(messages / outbox_s),
        "outbox_put_us": round(put_s / messages * 1e6, 1),
        "backlog": backlog,
        "backlog_drain_s": round(drain_s, 2),
        "backlog_drain_per_s": round(backlog / drain_s),
        "outbox_file_bytes_after_drain": db_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--backlog", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = bench(args.messages, args.backlog)
    if args.json:
        print(json.dumps(r))
        return
    print(f"direct publish (QoS 0):            {r['direct_per_s']:>8} msg/s")
    print(
        f"through the outbox (QoS 1, PUBACK): {r['outbox_per_s']:>8} msg/s  "
        f"({r['direct_per_s'] / max(r['outbox_per_s'], 1):.1f}× slower)"
    )
    print(f"outbox insert alone (fsync'd):      {r['outbox_put_us']:>8} µs/msg")
    print(f"{r['backlog']}-event backlog drained in {r['backlog_drain_s']} s ({r['backlog_drain_per_s']} msg/s)")


if __name__ == "__main__":
    main()
