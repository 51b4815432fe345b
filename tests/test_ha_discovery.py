"""Home Assistant MQTT discovery: the real agent on a real mosquitto, its messages checked by
Home Assistant's own validation when EDGE_AGENT_HA_PYTHON names a Python with the
`homeassistant` package (see tests/ha_schema.py), else by the schema derived from it.

Not verified here: a running Home Assistant instance creating the device and its entities
(the validator runs HA's schemas and template engine, not its entity registry).
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import INTERPRETER
from ha_schema import fallback_check, ha_check, ha_python, load_schema
from mqtt_helpers import AgentProcess, Collector, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import LocalBroker, free_port, start_mosquitto
from edge_agent.config import HomeAssistantConfig
from edge_agent.ha_discovery import STATE_FILE, discovery_configs, node_id
from edge_agent.mqtt.topics import Topics

DIGITS_PREPROCESS = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
ENTITIES = {"status", "last_label", "last_score", "fps", "inference_ms", "faults"}
WAIT_S = 30.0


def agent_config(tmp_path: Path, bundled: Path, device: str, port: int, **ha: Any) -> Path:
    return write_config(
        tmp_path,
        device=device,
        port=port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames"), "loop": True, "fps": 20},
            "model": {
                "path": str(bundled / "digits_float.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
            "service": {"stats_interval_s": 1, "watchdog": False},
            "homeassistant": ha,
        },
    )


def raw(payload: Any) -> str:
    """The message as text again (the Collector decodes JSON)."""
    if isinstance(payload, bytes):
        return payload.decode()
    return json.dumps(payload)


def stop(agent: AgentProcess) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.output[-3000:]


@contextlib.contextmanager
def running_agent(cfg: Path, port: int, device: str) -> Iterator[AgentProcess]:
    """The agent, once up: its own `online` (subscribed before it starts, so not one an earlier
    run left retained)."""
    c = Collector(port, f"edge/{device}/status")
    try:
        with AgentProcess(cfg) as agent:
            c.wait_for(lambda m: not m.retain and m.payload.get("state") == "online", WAIT_S, "a fresh online status")
            yield agent
    finally:
        c.close()


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def retained_configs(port: int, prefix: str, device: str, *, settle_s: float = 1.0) -> dict[str, Any]:
    """What a new subscriber (Home Assistant starting) gets: topic → decoded retained payload."""
    got: dict[str, Any] = {}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = json.loads(msg.payload) if msg.payload else None

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/+/{node_id(device)}/+/config", qos=1)
        assert subscribed.wait(5)
        threading.Event().wait(settle_s)  # retained messages arrive right after the SUBACK
    finally:
        client.loop_stop()
        client.disconnect()
    return got


@pytest.fixture
def ha_col(mosquitto: LocalBroker, device: str) -> Iterator[Collector]:
    c = Collector(mosquitto.port, f"homeassistant/+/{node_id(device)}/+/config")
    yield c
    c.close()


# ---- the payloads ---------------------------------------------------------------------------
def test_payloads_describe_one_device_with_six_entities() -> None:
    topics = Topics("edge", "pi.kitchen")
    configs = discovery_configs(HomeAssistantConfig(enabled=True, name="Kitchen"), topics, "1.2.3")
    assert {t.split("/")[3] for t in configs} == ENTITIES
    assert all(t.startswith("homeassistant/sensor/pi_kitchen/") for t in configs)  # '.' is not allowed there
    devices = [p["device"] for p in configs.values()]
    assert devices[0] == {
        "identifiers": ["pi.kitchen"],
        "name": "Kitchen",
        "model": "edge-agent",
        "manufacturer": "edge-agent",
        "sw_version": "1.2.3",
    }
    assert all(d == devices[0] for d in devices)
    assert len({p["unique_id"] for p in configs.values()}) == 6
    by_entity = {t.split("/")[3]: p for t, p in configs.items()}
    assert "availability" not in by_entity["status"]  # it shows `offline` itself
    for name in ENTITIES - {"status"}:
        (avail,) = by_entity[name]["availability"]
        assert avail["topic"] == "edge/pi.kitchen/status"
    assert by_entity["last_label"]["state_topic"] == "edge/pi.kitchen/results"
    assert by_entity["inference_ms"]["state_topic"] == "edge/pi.kitchen/stats"
    assert fallback_check({"discovery": [{"topic": t, "payload": json.dumps(p)} for t, p in configs.items()]}) == []


def test_fallback_schema_is_home_assistants_and_catches_bad_payloads() -> None:
    """The vendored schema: abbreviations expanded as HA does; broken payloads refused."""
    schema = load_schema()
    assert schema["homeassistant"].startswith("2024.3."), "derived from the last HA release for Python 3.11"
    assert schema["abbreviations"]["stat_t"] == "state_topic"
    good = {
        "~": "edge/d1",
        "stat_t": "~/stats",
        "val_tpl": "{{ value_json.fps }}",
        "uniq_id": "u1",
        "stat_cla": "measurement",
        "avty": [{"t": "~/status", "val_tpl": "{{ value_json.state }}"}],
        "dev": {"ids": ["d1"], "mdl": "edge-agent", "sw": "1"},
    }
    topic = "homeassistant/sensor/d1/fps/config"
    assert fallback_check({"discovery": [{"topic": topic, "payload": json.dumps(good)}]}) == []

    def errors(change: dict[str, Any], drop: str | None = None, t: str = topic) -> list[str]:
        p = copy.deepcopy(good) | change
        if drop:
            p.pop(drop)
        return fallback_check({"discovery": [{"topic": t, "payload": json.dumps(p)}]})

    assert any("state_topic" in e and "required" in e for e in errors({}, drop="stat_t"))
    assert any("stat_cla" in e or "state_class" in e for e in errors({"stat_cla": "average"}))
    assert any("misspelt" in e for e in errors({"misspelt": 1}))
    assert any("availability" in e for e in errors({"avty": [{"val_tpl": "x"}]}))  # no topic
    assert any("availability" in e for e in errors({"avty_t": "edge/d1/status"}))  # both forms at once
    assert any("device" in e for e in errors({"dev": {"name": "no identifiers"}}))
    assert any("ignores this topic" in e for e in errors({}, t="homeassistant/sensor/d.1/fps/config"))


# ---- end to end -----------------------------------------------------------------------------
def test_discovery_published_and_valid_for_home_assistant(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, ha_col: Collector, bundled: Path
) -> None:
    cfg = agent_config(tmp_path, bundled, device, mosquitto.port, enabled=True)
    with AgentProcess(cfg) as agent:
        ha_col.wait_for(lambda _m: len({m.topic for m in ha_col.snapshot()}) >= 6, WAIT_S, "6 discovery configs")
        col.wait_for(lambda m: m.leaf == "results", WAIT_S, "a result")
        col.wait_for(
            lambda m: m.leaf == "stats" and "invoke" in m.payload.get("stages", {}), WAIT_S, "stats with invoke"
        )
        stop(agent)
    configs = ha_col.snapshot()
    retained = retained_configs(mosquitto.port, "homeassistant", device)
    assert retained == {m.topic: m.payload for m in configs}  # what Home Assistant gets when it starts later
    assert {m.topic.split("/")[3] for m in configs} == ENTITIES
    state_dir = tmp_path / "state"
    assert set(json.loads((state_dir / STATE_FILE).read_text())["topics"]) == {m.topic for m in configs}

    prefix = f"edge/{device}"
    status = col.on("status")
    assert {s["state"] for s in status} >= {"online", "offline"}
    # the agent says `degraded` only when something is wrong: the same payload in that state
    degraded = {**status[0], "state": "degraded"}
    results, stats = col.on("results")[-5:], col.on("stats")
    capture = {
        "prefix": "homeassistant",
        "discovery": [{"topic": m.topic, "payload": raw(m.payload)} for m in configs],
        "samples": {
            f"{prefix}/status": [raw(s) for s in [*status, degraded]],
            f"{prefix}/results": [raw(r) for r in results],
            f"{prefix}/stats": [raw(s) for s in stats],
        },
    }
    if ha_python() is None:
        assert fallback_check(capture) == []
        return
    errors, report = ha_check(capture, tmp_path)
    assert errors == [], errors
    assert report["checked"] == 6 and report["homeassistant"].startswith("20")
    node = node_id(device)
    r = report["rendered"]
    # what Home Assistant would show, computed by its template engine from the agent's messages
    assert r[f"edge_agent_{node}_status"]["state"] == [s["state"] for s in [*status, degraded]]
    assert r[f"edge_agent_{node}_last_label"]["state"] == [x["top"][0]["label"] for x in results]
    assert [float(v) for v in r[f"edge_agent_{node}_last_score"]["state"]] == [x["top"][0]["score"] for x in results]
    assert [float(v) for v in r[f"edge_agent_{node}_fps"]["state"]] == [s["fps"] for s in stats]
    assert [float(v) for v in r[f"edge_agent_{node}_faults"]["state"]] == [sum(s["faults"].values()) for s in stats]
    inference = [v for v in r[f"edge_agent_{node}_inference_ms"]["state"]]
    assert inference == [str(s["stages"]["invoke"]["p50_ms"]) if "invoke" in s["stages"] else "None" for s in stats]
    assert r[f"edge_agent_{node}_fps"]["availability"] == [
        "offline" if s["state"] == "offline" else "online" for s in [*status, degraded]
    ]


@pytest.mark.e2e
def test_discovery_republished_on_reconnect(tmp_path: Path, device: str, bundled: Path) -> None:
    """A broker that restarts without persistence has lost the retained configs: the agent's
    reconnect publishes them again."""
    port = free_port()
    broker = start_mosquitto(port)
    try:
        with running_agent(agent_config(tmp_path, bundled, device, port, enabled=True), port, device) as agent:
            assert len(retained_configs(port, "homeassistant", device)) == 6
            broker.stop()
            broker = start_mosquitto(port)
            assert retained_configs(port, "homeassistant", device, settle_s=0.2) == {}
            c = Collector(port, f"edge/{device}/status")
            c.wait_status("online", WAIT_S)  # reconnected (paho's backoff: 1 s, plus jitter)
            c.close()
            configs = retained_configs(port, "homeassistant", device)
            assert {t.split("/")[3] for t in configs} == ENTITIES
            stop(agent)
    finally:
        broker.stop()


def test_disabling_discovery_removes_the_entities(
    tmp_path: Path, mosquitto: LocalBroker, device: str, bundled: Path
) -> None:
    cfg = agent_config(tmp_path, bundled, device, mosquitto.port, enabled=True)
    with running_agent(cfg, mosquitto.port, device) as agent:
        stop(agent)
    assert len(retained_configs(mosquitto.port, "homeassistant", device)) == 6
    state_file = tmp_path / "state" / STATE_FILE
    assert state_file.exists()

    watch = Collector(mosquitto.port, f"homeassistant/+/{node_id(device)}/+/config")
    watch.wait_for(lambda _m: len(watch.snapshot()) >= 6, 5, "the retained configs")
    mark = watch.mark()
    cfg = agent_config(tmp_path, bundled, device, mosquitto.port, enabled=False)
    with running_agent(cfg, mosquitto.port, device) as agent:
        watch.wait_for(lambda _m: len(watch.snapshot()) - mark >= 6, WAIT_S, "6 removals", start=mark)
        # forgotten by the loop once the broker acknowledged the removals
        wait_until(lambda: not state_file.exists(), "the state file to go")
        stop(agent)
    watch.close()
    removals = watch.snapshot()[mark:]
    assert all(m.payload == b"" for m in removals), removals  # empty: Home Assistant removes the entity
    assert {m.topic.split("/")[3] for m in removals} == ENTITIES
    assert retained_configs(mosquitto.port, "homeassistant", device) == {}
    assert not state_file.exists()
    assert "removing 6 discovery configs" in agent.log_path.read_text()


def test_a_new_prefix_clears_the_old_one(tmp_path: Path, mosquitto: LocalBroker, device: str, bundled: Path) -> None:
    state_file = tmp_path / "state" / STATE_FILE

    def remembered() -> list[str]:
        return list(json.loads(state_file.read_text())["topics"]) if state_file.exists() else []

    for prefix in ("homeassistant", "ha-test"):
        cfg = agent_config(tmp_path, bundled, device, mosquitto.port, enabled=True, discovery_prefix=prefix)
        with running_agent(cfg, mosquitto.port, device) as agent:
            # the old prefix's topics are forgotten once the broker acknowledged their removal
            wait_until(lambda p=prefix: all(t.startswith(p + "/") for t in remembered()), "the old topics to go")
            stop(agent)
    assert retained_configs(mosquitto.port, "homeassistant", device) == {}
    assert len(retained_configs(mosquitto.port, "ha-test", device)) == 6
    assert len(remembered()) == 6 and all(t.startswith("ha-test/") for t in remembered())
