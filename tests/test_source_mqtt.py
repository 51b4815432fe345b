"""The `mqtt` sensor source: JSON rows on a topic of the real mosquitto broker (fixture
`mosquitto`), published by a real paho client; then the real agent on such a topic, its
predictions compared with the bundled `sensor` model run directly on the same rows."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, write_config
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edge_agent.broker import LocalBroker, free_port, start_mosquitto
from edge_agent.config import MqttConfig, SourceConfig
from edge_agent.sources import NO_FRAME_YET, Frame, NoFrameYet, SourceProblem, open_source
from edge_agent.sources.base import MAX_WAIT_S
from edge_agent.sources.mqtt_source import MqttSensorSource, RowParser

NAMES = ("age", "bmi", "bp", "s5")
WAIT_S = 10.0


# ---- the message forms (no broker needed: the parser is plain code) ----------------------------
@pytest.mark.parametrize(
    ("payload", "values", "ts"),
    [
        (b"[61, 25.8, 90, 4.9972]", [61, 25.8, 90, 4.9972], None),
        (b'{"values": [61, null, 90, 4.9972]}', [61, math.nan, 90, 4.9972], None),
        (b'{"values": [1, 2, 3, 4], "ts": 1718000000.5}', [1, 2, 3, 4], 1718000000.5),
        (b'{"bmi": 25.8, "age": 61, "s5": 4.9972, "bp": 90}', [61, 25.8, 90, 4.9972], None),
        (b'{"bmi": 25.8, "age": null, "ts": 1718000001}', [math.nan, 25.8, math.nan, math.nan], 1718000001.0),
        (b"[1e308, -0.0, 0, -5]", [1e308, 0, 0, -5], None),
    ],
)
def test_accepted_forms(payload: bytes, values: list[float], ts: float | None) -> None:
    row = RowParser(NAMES).parse(payload)
    assert not isinstance(row, str), row
    np.testing.assert_array_equal(row.values, np.array(values, dtype=np.float64))
    assert row.values.dtype == np.float64
    assert row.ts == ts


BAD_MESSAGES: list[tuple[bytes, str]] = [
    (b"hello", "not valid JSON"),
    (b"\xff\xfe[1,2,3,4]", "not UTF-8"),
    (b"[1, 2, 3]", "3 values, the model takes 4"),
    (b"[1, 2, 3, 4, 5]", "5 values, the model takes 4"),
    (b"[]", "0 values"),
    (b'[1, "2", 3, 4]', "value 2 ('bmi'): \"2\" is not a number"),
    (b"[1, true, 3, 4]", "value 2 ('bmi'): true is not a number"),
    (b"[1, [2], 3, 4]", "is not a number"),
    (b"[1, NaN, 3, 4]", "NaN is not a finite number"),
    (b"[1, Infinity, 3, 4]", "is not a finite number"),
    (b"[1, 1" + b"0" * 400 + b", 3, 4]", "is not a finite number"),
    (b'{"age": 1, "weight": 2}', "unknown feature(s) 'weight'"),
    (b'{"age": "old"}', "'age': \"old\" is not a number"),
    (b"{}", "no values"),
    (b'{"ts": 1718000000}', "no values"),
    (b'{"values": [1, 2, 3, 4], "node": 7}', "unexpected key(s) beside values: 'node'"),
    (b'{"values": "1,2,3,4"}', "values: expected an array, got a string"),
    (b'{"values": [1, 2, 3, 4], "ts": "yesterday"}', 'ts: "yesterday" is not a time'),
    (b'{"values": [1, 2, 3, 4], "ts": 1718000000000}', "is not a time in seconds"),
    (b"42", "expected a JSON array"),
    (b"null", "got null"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("payload", "phrase"), BAD_MESSAGES, ids=[p[1] for p in BAD_MESSAGES])
def test_malformed_messages_say_what_is_wrong(payload: bytes, phrase: str) -> None:
    why = RowParser(NAMES).parse(payload)
    assert isinstance(why, str), why
    assert phrase in why
    assert "\n" not in why and len(why) < 200


def test_without_names_positional_rows_of_any_length_pass_and_by_name_is_refused() -> None:
    p = RowParser(())
    row = p.parse(b"[1, 2, 3]")
    assert not isinstance(row, str) and row.values.tolist() == [1, 2, 3]
    assert "need feature names" in str(p.parse(b'{"a": 1}'))


@pytest.mark.parametrize("topic", ["a/+b", "a/#/b", "a/b#", "#/a"])
def test_bad_topic_filter_is_a_config_error(topic: str) -> None:
    with pytest.raises(ValidationError, match="not a valid MQTT topic filter"):
        SourceConfig(kind="mqtt", topic=topic)


# ---- against the real broker ---------------------------------------------------------------------
class Publisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str | Any) -> None:
        data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pub(mosquitto: LocalBroker) -> Iterator[Publisher]:
    p = Publisher(mosquitto.port)
    yield p
    p.close()


def _source(port: int, topic: str, device: str, **kw: Any) -> MqttSensorSource:
    broker = MqttConfig(host="127.0.0.1", port=port, **kw.pop("broker", {}))
    src = open_source(
        SourceConfig(kind="mqtt", topic=topic, **kw), feature_names=NAMES, broker=broker, device_id=device
    )
    assert isinstance(src, MqttSensorSource)
    return src


def _subscribed(src: MqttSensorSource) -> MqttSensorSource:
    assert src.subscribed.wait(WAIT_S), "the broker did not acknowledge the subscription"
    return src


def _next(src: MqttSensorSource, timeout: float = WAIT_S) -> Frame | SourceProblem:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        item = src.read()
        assert time.monotonic() - t0 < MAX_WAIT_S + 0.5  # returns promptly when nothing is queued
        assert item is not None, "an MQTT topic never ends"
        if not isinstance(item, NoFrameYet):
            return item
    raise AssertionError(f"nothing within {timeout} s")


def test_rows_by_position_and_by_name_from_a_wildcard_topic(
    mosquitto: LocalBroker, pub: Publisher, device: str
) -> None:
    src = _subscribed(_source(mosquitto.port, f"sensors/{device}/+", device))
    try:
        assert src.read() is NO_FRAME_YET
        pub.send(f"sensors/{device}/node1", [61, 25.8, 90, 4.9972])
        pub.send(f"sensors/{device}/node2", {"s5": 4.4, "bp": 101, "age": 74, "bmi": None, "ts": 1718000000.25})
        pub.send(f"other/{device}/node3", [1, 2, 3, 4])  # not subscribed
        t0 = time.time()
        a, b = _next(src), _next(src)
        assert isinstance(a, Frame) and isinstance(b, Frame)
        assert a.source == f"sensors/{device}/node1" and b.source == f"sensors/{device}/node2"
        assert a.names == NAMES and (a.seq, b.seq) == (1, 2)
        np.testing.assert_array_equal(a.values, [61, 25.8, 90, 4.9972])
        np.testing.assert_array_equal(b.values, [74, math.nan, 101, 4.4])
        assert abs(a.ts - t0) < 30 and b.ts == 1718000000.25  # arrival time, or the sensor's own
        assert src.read() is NO_FRAME_YET
    finally:
        src.close()


def test_each_malformed_message_is_one_problem_naming_its_topic(
    mosquitto: LocalBroker, pub: Publisher, device: str
) -> None:
    src = _subscribed(_source(mosquitto.port, f"sensors/{device}/#", device, broker={"max_incoming_kb": 1}))
    try:
        bad = [*BAD_MESSAGES[:10], (b"[" + b"1," * 600 + b"1]", "exceeds mqtt.max_incoming_kb (1024 bytes)")]
        for i, (payload, _) in enumerate(bad):
            pub.send(f"sensors/{device}/bad/{i}", payload)
            pub.send(f"sensors/{device}/good", [i, 1, 2, 3])  # good rows still come between them
        for i, (_, phrase) in enumerate(bad):
            p = _next(src)
            assert isinstance(p, SourceProblem), p
            assert p.source == f"sensors/{device}/bad/{i}" and phrase in p.message and "\n" not in p.message
            f = _next(src)
            assert isinstance(f, Frame) and f.values is not None and f.values[0] == i
    finally:
        src.close()


def test_a_full_queue_drops_the_oldest_and_says_how_many(mosquitto: LocalBroker, pub: Publisher, device: str) -> None:
    src = _subscribed(_source(mosquitto.port, f"sensors/{device}", device, mqtt_queue=5))
    try:
        for i in range(20):
            pub.send(f"sensors/{device}", [i, 0, 0, 0])
        deadline = time.monotonic() + WAIT_S
        while src._dropped < 15 and time.monotonic() < deadline:  # all 20 received (no other way to see it)
            time.sleep(0.05)
        p = _next(src)
        assert isinstance(p, SourceProblem) and p.message.startswith("15 message(s) dropped"), p
        got = [_next(src) for _ in range(5)]
        assert [f.values[0] for f in got if isinstance(f, Frame) and f.values is not None] == [15, 16, 17, 18, 19]
        assert src.read() is NO_FRAME_YET
    finally:
        src.close()


@pytest.mark.e2e
def test_broker_down_at_start_then_up(tmp_path: Path, device: str) -> None:
    """No broker: `read()` answers NO_FRAME_YET promptly; paho connects when one starts."""
    port = free_port()
    src = _source(port, f"sensors/{device}", device)
    broker: LocalBroker | None = None
    try:
        for _ in range(5):
            assert src.read() is NO_FRAME_YET
        broker = start_mosquitto(port)
        _subscribed(src)  # paho's reconnect backoff (1 s, then 2 s, ...) finds it
        p = Publisher(port)
        p.send(f"sensors/{device}", [1, 2, 3, 4])
        p.close()
        f = _next(src)
        assert isinstance(f, Frame) and f.values is not None and f.values.tolist() == [1, 2, 3, 4]
    finally:
        src.close()
        if broker is not None:
            broker.stop()


# ---- the real agent ------------------------------------------------------------------------------
def test_agent_predicts_rows_from_a_topic_like_the_model_and_reports_garbage(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, pub: Publisher, bundled: Path
) -> None:
    from edge_agent.runtime.backends import select_backend  # noqa: PLC0415

    feats = json.loads((bundled / "manifest.json").read_text())["models"]["sensor"]["transform"]["features"]
    with (bundled / "sensor_heldout.csv").open(newline="") as fh:
        rows = [[float(r[n]) for n in NAMES] for r in list(csv.DictReader(fh))[:20]]
    rows[3][1] = math.nan  # a missing bmi, sent as null: imputed with the training mean
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "mqtt", "topic": f"sensors/{device}/#", "mqtt_qos": 1},
            "model": {"path": str(bundled / "sensor.tflite"), "task": "regression", "interpreter": INTERPRETER},
            "preprocess": {
                "features": [{"name": f["name"], "mean": f["mean"], "std": f["std"], "impute": "mean"} for f in feats]
            },
            "postprocess": {"value_names": ["progression"]},
            "guard": {"event_interval_s": 0},
        },
    )
    probe = f"sensors/{device}/probe"
    with AgentProcess(cfg) as agent:
        col.wait_status("online", 60)
        # the agent's subscription is up once a probe row comes back as a result
        deadline = time.monotonic() + 30
        while not any(r["frame"]["source"] == probe for r in col.on("results")):
            assert time.monotonic() < deadline, agent.output
            pub.send(probe, rows[0])
            time.sleep(0.2)
        garbage = {f"sensors/{device}/bad/json": b"{oops", f"sensors/{device}/bad/short": b"[1, 2]"}
        for i, row in enumerate(rows):
            vals = [None if math.isnan(v) else v for v in row]
            if i % 2:
                pub.send(f"sensors/{device}/node1", {"values": vals})
            else:
                pub.send(f"sensors/{device}/node2", dict(zip(NAMES, vals, strict=True)))
            if i == 5:
                for topic, payload in garbage.items():
                    pub.send(topic, payload)
        deadline = time.monotonic() + 30
        while len(_real(col)) < len(rows) or not all(_reported(col, t) for t in garbage):
            assert time.monotonic() < deadline, (len(_real(col)), col.on("events"), agent.output)
            time.sleep(0.1)
        assert agent.running(), agent.output
        assert "Traceback" not in agent.output, agent.output

    # the reference: the same rows imputed and standardised by hand, through a bare interpreter
    interp = select_backend(INTERPRETER).interpreter_class(model_path=str(bundled / "sensor.tflite"))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    means = np.array([f["mean"] for f in feats])
    stds = np.array([f["std"] for f in feats])
    by_topic: dict[str, list[float]] = {"node1": [], "node2": []}
    for i, row in enumerate(rows):
        x = np.where(np.isnan(row), means, row)
        interp.set_tensor(inp["index"], ((x - means) / stds).astype(np.float32).reshape(inp["shape"]))
        interp.invoke()
        by_topic["node1" if i % 2 else "node2"].append(float(interp.get_tensor(out["index"]).ravel()[0]))
    for node, want in by_topic.items():
        got = [r for r in _real(col) if r["frame"]["source"] == f"sensors/{device}/{node}"]
        assert [r["values"]["progression"] for r in got] == pytest.approx(want, rel=1e-4)
    imputed = [r for r in _real(col) if r.get("imputed")]
    assert [r["imputed"] for r in imputed] == [["bmi"]]


def _reported(col: Collector, topic: str) -> bool:
    return any(e["kind"] == "source_error" and e["message"].startswith(f"{topic}: ") for e in col.on("events"))


def _real(col: Collector) -> list[dict[str, Any]]:
    """Results for the test's rows (not the probes)."""
    return [r for r in col.on("results") if not r["frame"]["source"].endswith("/probe")]
