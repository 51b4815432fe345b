"""Soak: `edge-agent run` at its highest rate for an hour, with the broker restarted every few minutes.

    python benchmarks/soak.py [--minutes 60] [--restart-every 5] [--down-s 15] [--report-every 30] [--json]

On a Pi: from the checkout with the agent's venv, e.g. `.venv/bin/python benchmarks/soak.py`
(mosquitto installed; nothing else runs on the port it picks). The agent is the real process
(`python -m edge_agent run`), on the synthetic source (320×240 noise, no fps limit: as fast as the
pipeline goes) with the bundled digits_uint8 model, threads = 1, publishing to a mosquitto this
script owns: every --restart-every minutes it is stopped, left down --down-s seconds, and
started again on the same port (no persistence: what the broker held is gone, as after a crash).

A subscriber records everything on edge/<device>/#. It subscribes at QoS 1 on every (re)connection
and retries every 0.05-0.2 s (as tests/test_outbox_e2e.py's Recorder), so it is subscribed again
long before the agent's next attempt; events go through the agent's outbox at QoS 1 and are
removed only once the broker acknowledged them, so none should be lost across a restart.

Every --report-every seconds: elapsed time, broker up/down, results received (and per second
since the last line), events received, dropped frames and outbox drops (from the retained
stats topic), outbox depth, and the agent process's RSS. At the end: RSS growth from the
first report (after the warm-up) to the last (target < 2 MB over 60 minutes), events sent (the
agent's seq counter for its events topic, read from its outbox after it stopped) against
events received, the seq numbers missing, and the results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import LocalBroker, free_port, start_mosquitto

BUNDLED = Path(__file__).resolve().parents[1] / "edge_agent" / "bundled"
DEVICE = "soak"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


class Recorder:
    """Counts results, keeps event seqs and the latest stats; resubscribes on every connection."""

    def __init__(self, port: int) -> None:
        self.topic = f"edge/{DEVICE}/#"
        self.results = 0
        self.result_seqs_max = 0
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.connects = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-recorder", protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connects += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind not in ("results", "events", "stats"):
            return
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if kind == "results":
                self.results += 1
                self.result_seqs_max = max(self.result_seqs_max, int(data.get("seq", 0)))
            elif kind == "events":
                self.events.append({"seq": data.get("seq"), "kind": data.get("kind")})
            else:
                self.stats = data

    def snapshot(self) -> tuple[int, int, dict[str, Any]]:
        with self._lock:
            return self.results, len(self.events), dict(self.stats)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(folder: Path, port: int) -> Path:
    cfg = folder / "agent.toml"
    cfg.write_text(
        f"""
[device]
id = "{DEVICE}"
state_dir = "{folder / "state"}"
[source]
kind = "synthetic"
width = 320
height = 240
[model]
path = "{BUNDLED / "digits_uint8.tflite"}"
labels = "{BUNDLED / "digits_labels.txt"}"
task = "classification"
threads = 1
[preprocess]
color = "rgb"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "edge"
[service]
stats_interval_s = 5
log_level = "warning"
"""
    )
    return cfg


def events_sent(state_dir: Path) -> int:
    """The agent's seq counter for its events topic, as it saved it when it stopped."""
    db = sqlite3.connect(state_dir / "outbox.sqlite")
    try:
        row = db.execute("SELECT seq FROM seqs WHERE topic = ?", (f"edge/{DEVICE}/events",)).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def line(t0: float, up: bool, rec: Recorder, pid: int, last: list[Any]) -> dict[str, Any]:
    results, events, stats = rec.snapshot()
    now = time.monotonic()
    rate = (results - last[0]) / max(now - last[1], 1e-6)
    last[0], last[1] = results, now
    faults = stats.get("faults", {})
    return {
        "t_s": round(now - t0, 1),
        "broker": "up" if up else "down",
        "results": results,
        "results_per_s": round(rate, 1),
        "events": events,
        "dropped_frames": stats.get("dropped_frames", 0),
        "outbox_dropped": faults.get("outbox_dropped_results", 0) + faults.get("outbox_dropped_events", 0),
        "outbox_depth": stats.get("outbox", {}).get("depth", 0),
        "rss_mb": round(rss_mb(pid), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--restart-every", type=float, default=5.0, help="minutes between broker restarts")
    ap.add_argument("--down-s", type=float, default=15.0, help="how long the broker stays down each time")
    ap.add_argument("--report-every", type=float, default=30.0, help="seconds between two printed lines")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    port = free_port()
    broker: LocalBroker | None = start_mosquitto(port)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-soak-") as tmp:
        folder = Path(tmp)
        cfg = write_config(folder, port)
        rec = Recorder(port)
        log = (folder / "agent.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_restart = t0 + args.restart_every * 60
        next_report = t0 + args.report_every
        restarts = 0
        down_until = 0.0
        last: list[Any] = [0, t0]
        if not args.json:
            print(
                f"soak: {args.minutes:g} min, broker restart every {args.restart_every:g} min "
                f"(down {args.down_s:g} s), agent pid {proc.pid}",
                flush=True,
            )
            print(
                f"{'t s':>7} {'broker':>6} {'results':>9} {'res/s':>8} {'events':>6} {'dropped':>7} "
                f"{'ob drop':>7} {'ob depth':>8} {'RSS MB':>7}",
                flush=True,
            )
        try:
            while time.monotonic() < end and proc.poll() is None:
                now = time.monotonic()
                if broker is not None and now >= next_restart and now + args.down_s < end - 10:
                    broker.stop()
                    broker = None
                    restarts += 1
                    down_until = now + args.down_s
                if broker is None and now >= down_until:
                    broker = start_mosquitto(port)
                    next_restart = time.monotonic() + args.restart_every * 60
                if now >= next_report:
                    row = line(t0, broker is not None, rec, proc.pid, last)
                    rows.append(row)
                    if not args.json:
                        print(
                            f"{row['t_s']:>7.0f} {row['broker']:>6} {row['results']:>9} {row['results_per_s']:>8.1f} "
                            f"{row['events']:>6} {row['dropped_frames']:>7} {row['outbox_dropped']:>7} "
                            f"{row['outbox_depth']:>8} {row['rss_mb']:>7.2f}",
                            flush=True,
                        )
                    next_report += args.report_every
                time.sleep(0.1)
            if broker is None:
                broker = start_mosquitto(port)
            time.sleep(3.0)  # the last reconnect's event reaches the subscriber
            exited = proc.poll()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            rec.close()
            if broker is not None:
                broker.stop()
            log.close()
        sent = events_sent(folder / "state")
        tail = (folder / "agent.log").read_text(errors="replace").splitlines()[-5:]
    seqs = sorted({e["seq"] for e in rec.events if isinstance(e.get("seq"), int)})
    missing = sorted(set(range(1, sent + 1)) - set(seqs))
    kinds: dict[str, int] = {}
    for e in rec.events:
        kinds[str(e["kind"])] = kinds.get(str(e["kind"]), 0) + 1
    steady = rows[1:] if len(rows) > 1 else rows  # the first line is inside the warm-up
    summary = {
        "minutes": args.minutes,
        "restarts": restarts,
        "exit_code": rc,
        "exited_early": exited is not None,
        "rss_first_mb": steady[0]["rss_mb"] if steady else 0.0,
        "rss_last_mb": steady[-1]["rss_mb"] if steady else 0.0,
        "rss_growth_mb": round(steady[-1]["rss_mb"] - steady[0]["rss_mb"], 2) if steady else 0.0,
        "events_sent": sent,
        "events_received": len(rec.events),
        "events_distinct": len(seqs),
        "events_missing": missing,
        "event_kinds": kinds,
        "results_received": rec.results,
        "results_sent": rec.result_seqs_max,
        "subscriber_connects": rec.connects,
        "agent_log_tail": tail,
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}))
    else:
        s = summary
        print(
            f"RSS {s['rss_first_mb']:.2f} MB (at {steady[0]['t_s'] if steady else 0:.0f} s) → "
            f"{s['rss_last_mb']:.2f} MB: growth {s['rss_growth_mb']:+.2f} MB (target < 2 MB over 60 min)"
        )
        print(
            f"events: sent {s['events_sent']} (the agent's seq), received {s['events_received']} "
            f"({s['events_distinct']} distinct), missing {s['events_missing'] or 'none'}; kinds {s['event_kinds']}"
        )
        print(
            f"results: received {s['results_received']} of {s['results_sent']} sent at QoS 0 "
            f"(the ones published while the broker was down are lost by design); {restarts} broker restarts, "
            f"subscriber connected {s['subscriber_connects']} times; agent exit code {rc}"
        )
        if s["exited_early"]:
            print("the agent exited before the end:\n  " + "\n  ".join(tail))
    return 0 if not missing and not summary["exited_early"] else 1


if __name__ == "__main__":
    sys.exit(main())
