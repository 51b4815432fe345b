"""`edge-agent demo`, and the amqtt broker it falls back to when mosquitto is not installed."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_helpers import REPO, Collector, retained, subprocess_env

from edge_agent.broker import LocalBroker, free_port, port_answers, start_amqtt

RESULT_LINE = re.compile(r"^frame\s+\d+\s+(\d{4}_(\d)\.png)\s+→\s+(\S+)\s+([\d.]+)\s+(✓|✗)")
SUMMARY = re.compile(r"^(\d+) results, ([\d.]+)% correct; first result ([\d.]+) s after start$")


def run_demo_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_demo_output(out: str) -> tuple[int, float, float]:
    lines = out.splitlines()
    results = [m for m in map(RESULT_LINE.match, lines) if m]
    assert results, f"no result lines:\n{out[-3000:]}"
    for m in results:
        # the ✓/✗ mark agrees with the truth in the file name
        assert (m.group(5) == "✓") == (
            m.group(3)
            == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][int(m.group(2))]
        ), m.group(0)
    summaries = [m for m in map(SUMMARY.match, lines) if m]
    assert len(summaries) == 1, f"no final summary:\n{out[-3000:]}"
    n, pct, first = int(summaries[0].group(1)), float(summaries[0].group(2)), float(summaries[0].group(3))
    assert n == len(results), f"summary says {n} results, {len(results)} lines were printed"
    assert lines[-1] == summaries[0].group(0), "the summary is the last line"
    return n, pct, first


@pytest.mark.e2e
def test_demo_starts_its_own_broker_and_shows_results() -> None:
    port = free_port()
    assert not port_answers("127.0.0.1", port)
    proc = run_demo_process("--seconds", "8", "--port", str(port))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert re.search(rf"started (mosquitto|amqtt) on localhost:{port}", proc.stdout), proc.stdout[:500]
    n, pct, first = check_demo_output(proc.stdout)
    assert first <= 30.0, f"first result {first} s after start"
    assert pct >= 90.0, f"only {pct}% correct over {n} results"
    assert not port_answers("127.0.0.1", port), "the demo left its broker running"


def test_demo_uses_a_broker_already_running(mosquitto: LocalBroker) -> None:
    proc = run_demo_process("--seconds", "4", "--port", str(mosquitto.port))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"using the MQTT broker already on localhost:{mosquitto.port}" in proc.stdout
    check_demo_output(proc.stdout)
    assert port_answers("127.0.0.1", mosquitto.port), "the demo stopped a broker it did not start"
    assert retained(mosquitto.port, "edge/demo/status")["state"] == "offline"


# ---- the amqtt fallback --------------------------------------------------------------------
@pytest.fixture
def amqtt_broker() -> Iterator[LocalBroker]:
    pytest.importorskip("amqtt", reason="amqtt (the fallback broker) is not installed")
    broker = start_amqtt(free_port())
    yield broker
    broker.stop()


def test_amqtt_relays_mqtt311_messages(amqtt_broker: LocalBroker, caplog: pytest.LogCaptureFixture) -> None:
    assert amqtt_broker.kind == "amqtt" and amqtt_broker.protocol == "3.1.1"
    # starting it must not log errors (a demo user would see them): no probe connection
    noise = [r.getMessage() for r in caplog.get_records("setup") if r.levelno >= logging.ERROR]
    assert noise == [], noise
    col = Collector(amqtt_broker.port, "probe/#", protocol=mqtt.MQTTv311)
    try:
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", amqtt_broker.port)
        pub.loop_start()
        try:
            pub.publish("probe/q0", b'{"n": 0}', qos=0)
            pub.publish("probe/q1", b'{"n": 1}', qos=1).wait_for_publish(10)
            pub.publish("probe/kept", b'{"n": 2}', qos=1, retain=True).wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()
        col.wait_for(lambda m: m.topic == "probe/kept", 10, "the retained probe")
        got = {m.topic: m.payload for m in col.snapshot()}
        assert got == {"probe/q0": {"n": 0}, "probe/q1": {"n": 1}, "probe/kept": {"n": 2}}
    finally:
        col.close()
    assert retained(amqtt_broker.port, "probe/kept", protocol=mqtt.MQTTv311) == {"n": 2}


def test_demo_config_agent_runs_against_amqtt(amqtt_broker: LocalBroker, tmp_path: Path) -> None:
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.config import parse_config  # noqa: PLC0415
    from edge_agent.demo import demo_config  # noqa: PLC0415

    col = Collector(amqtt_broker.port, "edge/demo/#", protocol=mqtt.MQTTv311)
    cfg = parse_config(demo_config(state_dir=str(tmp_path / "state"), port=amqtt_broker.port, protocol="3.1.1", fps=20))
    assert cfg.mqtt.protocol == "3.1.1"
    seen: list[dict[str, object]] = []
    agent = Agent(cfg, on_result=seen.append)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    try:
        col.wait_status("online", 30)
        # ten results through the broker, then a clean stop
        col.wait_for(lambda m: m.leaf == "results" and m.payload["seq"] >= 10, 30, "ten results")
    finally:
        agent.stop()
        thread.join(15)
    try:
        assert not thread.is_alive(), "the agent did not stop"
        col.wait_status("offline", 15)
        results = col.on("results")
        assert len(results) >= 10
        assert [r["seq"] for r in results] == list(range(1, len(results) + 1))
        assert all(r["model"]["name"] == "digits_uint8.tflite" and r["top"] for r in results)
        # what the broker relayed is what the agent published
        assert [r["seq"] for r in seen[: len(results)]] == [r["seq"] for r in results]
        correct = sum(1 for r in results if str(r["top"][0]["index"]) == r["frame"]["source"].split("_")[1][0])
        assert correct >= 0.9 * len(results), f"{correct}/{len(results)}"
    finally:
        col.close()
    assert retained(amqtt_broker.port, "edge/demo/status", protocol=mqtt.MQTTv311)["state"] == "offline"


def test_amqtt_on_a_busy_port_fails_with_one_clear_error() -> None:
    pytest.importorskip("amqtt", reason="amqtt (the fallback broker) is not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port}.*(in use|bind)"):
            start_amqtt(port)
