"""Helpers for the end-to-end tests: a recording MQTT subscriber, TOML configs, agent processes.

Everything here is real: a paho-mqtt 2 client on the test broker, the agent started as
`python -m edge_agent run -c FILE` in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.broker import LocalBroker, free_port, start_mosquitto

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 60.0


# ---- names and configs ------------------------------------------------------------------
def device_id(name: str) -> str:
    """A device id (a valid topic segment, unique per test) from a pytest node name."""
    dev = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).strip("-")
    return ("t-" + dev)[:64]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | os.PathLike):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(doc: dict[str, dict[str, Any]]) -> str:
    """Sections of scalars and lists, plus arrays of tables (a list of dicts under a key)."""
    lines: list[str] = []
    for section, body in doc.items():
        lines.append(f"[{section}]")
        tables = {k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        for k, v in body.items():
            if k not in tables:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, rows in tables.items():
            for row in rows:
                lines.append(f"[[{section}.{k}]]")
                lines.extend(f"{rk} = {_toml_value(rv)}" for rk, rv in row.items())
        lines.append("")
    return "\n".join(lines)


def write_config(
    tmp_path: Path,
    *,
    device: str,
    port: int,
    sections: dict[str, dict[str, Any]],
    mqtt_extra: dict[str, Any] | None = None,
) -> Path:
    """A config file in tmp_path with its own device id and state_dir on the test broker."""
    doc: dict[str, dict[str, Any]] = {
        "device": {"id": device, "state_dir": str(tmp_path / "state")},
        **sections,
        "mqtt": {"host": "127.0.0.1", "port": port, **(mqtt_extra or {})},
    }
    path = tmp_path / "config.toml"
    path.write_text(to_toml(doc))
    return path


# ---- the agent process ------------------------------------------------------------------
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def agent_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "run", "-c", str(config)]


def run_agent(config: Path, *, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the agent to completion (a finite source with exit_when_done)."""
    return subprocess.run(
        agent_command(config),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class AgentProcess:
    """A long-running agent; its output goes to files so that no pipe ever fills up."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            agent_command(config), cwd=REPO, env=subprocess_env(), stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---- a recording subscriber -------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    topic: str
    payload: Any
    retain: bool
    at: float

    @property
    def leaf(self) -> str:
        """The topic after `prefix/device/`: status, results, events, stats, ..."""
        return self.topic.split("/", 2)[2]


class Collector:
    """Subscribes to one topic filter (QoS 1) and records every message, decoded from JSON.

    The constructor returns once the broker has acknowledged the subscription, so nothing the
    agent publishes afterwards can be missed.
    """

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        host: str = "127.0.0.1",
        retain_as_published: bool = False,
    ) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if protocol == mqtt.MQTTv5:
            from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: PLC0415

            self.client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=retain_as_published))
        else:
            self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError(f"the broker on port {port} did not acknowledge the subscription to {topic}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(msg.payload)
        except (ValueError, RecursionError):  # not JSON, or hostile nesting: kept as bytes
            payload = msg.payload
        with self._cond:
            self.messages.append(Message(msg.topic, payload, bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def on(self, leaf: str) -> list[Any]:
        """Payloads received on one leaf topic, in arrival order."""
        return [m.payload for m in self.snapshot() if m.leaf == leaf]

    def wait_for(
        self, pred: Callable[[Message], bool], timeout: float, what: str = "a message", *, start: int = 0
    ) -> Message:
        """The first message from index `start` on (received already or within timeout) that matches."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g} s waiting for {what}; got: "
                        + ", ".join(f"{m.leaf}" for m in self.messages[-20:])
                    )
                self._cond.wait(left)

    def wait_status(self, state: str, timeout: float, *, after: int = 0) -> Message:
        """The first status message in `state`, among the messages from index `after` on."""
        return self.wait_for(
            lambda m: m.leaf == "status" and isinstance(m.payload, dict) and m.payload.get("state") == state,
            timeout,
            f"status {state!r}",
            start=after,
        )

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, *, timeout: float = 5.0, protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> Any:
    """The retained message on `topic` as a new subscriber sees it (None if there is none)."""
    got: list[Any] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and not got:
            got.append(json.loads(msg.payload) if msg.payload else None)
            done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


def iter_payloads(messages: list[Message], leaf: str) -> Iterator[Any]:
    return (m.payload for m in messages if m.leaf == leaf)


# ---- a broker that can be stopped and started again on the same port ------------------------
def _mosquitto_children() -> set[int]:
    """The mosquitto processes this test process started."""
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stat = (d / "stat").read_text()
                comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
                if comm == "mosquitto" and int(rest[1]) == os.getpid():
                    pids.add(int(d.name))
    return pids


class Broker:
    def __init__(self) -> None:
        self.port = free_port()
        self._broker: LocalBroker | None = None
        self._pid: int | None = None

    def start(self) -> None:
        assert self._broker is None
        before = _mosquitto_children()
        self._broker = start_mosquitto(self.port)
        new = _mosquitto_children() - before
        self._pid = new.pop() if len(new) == 1 else None

    def hang_then_die(self, hang_s: float) -> None:
        """The broker stops answering (no PUBACK: the agent's messages stay in flight), then dies."""
        if self._pid is not None:
            os.kill(self._pid, signal.SIGSTOP)
            time.sleep(hang_s)
            os.kill(self._pid, signal.SIGKILL)
        self.stop()

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
            self._pid = None
