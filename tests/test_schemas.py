"""The payload schemas in schemas/: valid themselves, and met by everything the real agent publishes.

The end-to-end runs here exercise each kind of payload (results of both tasks, merged and
single events, stats, status including the Last Will, answers to commands and to malformed
config updates) and validate every message received on the device's topics.
"""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import INTERPRETER
from jsonschema import Draft202012Validator
from mqtt_helpers import AgentProcess, Collector, Message, run_agent, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import LocalBroker
from schemas import NAMES, SCHEMA_OF_LEAF, errors, schema, validate

DIGITS_PREPROCESS = {
    "resize": "stretch",
    "interpolation": "linear",
    "color": "rgb",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
FEW_DIGITS = "000[0-9]_*.png"
SENSOR_FEATURES = ("age", "bmi", "bp", "s5")
SHA = "0" * 64


# ---- the schemas themselves ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    doc = schema(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(doc)
    undocumented = [k for k, v in doc["properties"].items() if "description" not in v]
    assert not undocumented, f"{name}: fields without a description: {undocumented}"


def _result(**fields: Any) -> dict[str, Any]:
    return {
        "seq": 1,
        "ts": 1700000000.5,
        "frame": {"seq": 1, "ts": 1700000000.4, "source": "0001_3.png"},
        "model": {"name": "m.tflite", "sha256": SHA},
        "latency_ms": {"preprocess": 0.1, "invoke": 0.3, "total": 0.5},
        **fields,
    }


@pytest.mark.parametrize(
    "payload",
    [
        _result(task="classification", top=[{"index": 3, "label": "three", "score": 0.9}]),
        _result(task="classification", top=[]),
        _result(task="regression", values={"progression": 151.2}, imputed=["bmi"], units={"progression": "score"}),
        _result(task="raw", values={"value0": 1.0, "value1": -2.0}),
        _result(task="detection", objects=[{"label": "cat", "score": 0.8, "box": [1, 2, 30.5, 40]}]),
        _result(task="pose", keypoints=[{"name": "nose", "x": 10, "y": 20.5, "score": 0.7}]),
        _result(task="segmentation", classes=[{"label": "road", "fraction": 0.25}]),
    ],
    ids=["classification", "classification-empty", "regression", "raw", "detection", "pose", "segmentation"],
)
def test_result_schema_accepts_every_task(payload: dict[str, Any]) -> None:
    validate("result", payload)


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("result", _result(task="classification"), "'top' is a required property"),
        ("result", _result(task="regression", values={"y": 1.0}, top=[]), "should not be valid under"),
        ("result", _result(task="classification", top=[], extra=1), "Additional properties"),
        ("result", _result(task="detection", objects=[{"label": "a", "score": 1, "box": [1, 2, 3]}]), "too short"),
        ("result", _result(task="regression", values={"y": "1.0"}), "is not of type 'number'"),
        ("result", _result(task="tracking", values={"y": 1.0}), "is not one of"),
        ("result", {**_result(task="raw", values={"y": 1}), "model": {"name": "m", "sha256": "ABC"}}, "does not match"),
        (
            "event",
            {"seq": 1, "ts": 1, "kind": "nan_output", "severity": "fatal", "message": "m", "detail": {}, "count": 1},
            "is not one of",
        ),
        (
            "event",
            {"seq": 1, "ts": 1, "kind": "nan_output", "severity": "error", "message": "m", "detail": {}, "count": 0},
            "less than the minimum",
        ),
        (
            "event",
            {"seq": 1, "ts": 1, "kind": "nan_output", "severity": "error", "message": "m", "count": 1},
            "'detail' is a required",
        ),
        (
            "status",
            {
                "state": "running",
                "version": "0.1.0",
                "model": {"name": "m", "sha256": None, "delegate": None},
                "since": 1,
            },
            "is not one of",
        ),
        ("config_result", {"version": 2, "applied": False, "errors": []}, "should be non-empty"),
        ("config_result", {"version": 2, "applied": True, "errors": [], "extra": "x"}, "Additional properties"),
        ("cmd_result", {"command": "pause", "ok": "yes", "message": "m", "ts": 1}, "is not of type 'boolean'"),
    ],
)
def test_schemas_reject_payloads_off_the_contract(name: str, payload: dict[str, Any], why: str) -> None:
    found = errors(name, payload)
    assert found, f"{name} accepted {payload}"
    assert any(why in e for e in found), found


# ---- the real agent ---------------------------------------------------------------------------
def _inbound(leaf: str) -> bool:
    """What the test itself sends to the device (the collector's wildcard sees it too)."""
    return leaf == "config/set" or (leaf.startswith("cmd/") and leaf != "cmd/result")


def validate_all(messages: list[Message]) -> Counter[str]:
    """Validate every payload the agent published; the count of messages per schema."""
    seen: Counter[str] = Counter()
    failures: list[str] = []
    for m in messages:
        if _inbound(m.leaf):
            continue
        if m.leaf == "snapshot":  # a JPEG, not JSON
            assert isinstance(m.payload, bytes) and m.payload[:2] == b"\xff\xd8", m.payload[:20]
            continue
        if m.leaf == "mask":  # a PNG, not JSON
            assert isinstance(m.payload, bytes) and m.payload[:8] == b"\x89PNG\r\n\x1a\n", m.payload[:20]
            continue
        name = SCHEMA_OF_LEAF.get(m.leaf)
        if name is None:
            failures.append(f"{m.topic}: no schema for this topic; payload: {m.payload!r}"[:2000])
            continue
        seen[name] += 1
        try:
            validate(name, m.payload)
        except AssertionError as err:
            failures.append(f"{m.topic}: {err}"[:4000])
    assert not failures, f"{len(failures)} payload(s) off their schema:\n" + "\n".join(failures[:10])
    return seen


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, data in messages:
            client.publish(topic, data, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_classification_commands_and_config_answers_match_schemas(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames" / FEW_DIGITS), "loop": True, "fps": 20},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
            "postprocess": {"top_k": 3},
            "service": {"stats_interval_s": 1},
        },
    )
    base = f"edge/{device}"
    with AgentProcess(cfg) as agent:
        col.wait_status("online", 30)
        col.wait_for(lambda m: m.leaf == "results", 30, "a result")
        _publish(
            mosquitto.port,
            [
                (f"{base}/cmd/selftest", b""),
                (f"{base}/cmd/bogus", b"{}"),
                (f"{base}/cmd/snapshot", b""),
                (f"{base}/config/set", b"{not json"),
                (f"{base}/config/set", json.dumps({"version": 3, "config": {}, "sig": "00"}).encode()),
            ],
        )
        for command in ("selftest", "bogus", "snapshot"):
            col.wait_for(
                lambda m, c=command: m.leaf == "cmd/result" and m.payload.get("command") == c,
                15,
                f"the answer to cmd/{command}",
            )
        col.wait_for(
            lambda m: m.leaf == "config/result" and m.payload.get("version") is None, 15, "config/result (bad)"
        )
        col.wait_for(lambda m: m.leaf == "config/result" and m.payload.get("version") == 3, 15, "config/result (v3)")
        col.wait_for(lambda m: m.leaf == "stats", 15, "stats")
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    col.wait_status("offline", 15)

    seen = validate_all(col.snapshot())
    assert {"status", "result", "stats", "cmd_result", "config_result", "event"} <= set(seen), seen
    answers = {p["command"]: p for p in col.on("cmd/result")}
    assert answers["selftest"]["ok"] is True and answers["bogus"]["ok"] is False, answers
    assert answers["snapshot"]["ok"] is True and answers["snapshot"]["bytes"] > 0, answers
    assert all(r["applied"] is False for r in col.on("config/result"))


def test_regression_rows_with_a_blank_cell_match_schemas(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    manifest = json.loads((bundled / "manifest.json").read_text())["models"]["sensor"]
    feats = {f["name"]: f for f in manifest["transform"]["features"]}
    with (bundled / "sensor_heldout.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:6]
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({k: ("" if i == 2 and k == "bmi" else v) for k, v in row.items()})
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "csv", "path": str(csv_path), "loop": False, "exit_when_done": True},
            "model": {"path": str(bundled / "sensor.tflite"), "task": "regression", "interpreter": INTERPRETER},
            "preprocess": {
                "features": [
                    {"name": n, "mean": feats[n]["mean"], "std": feats[n]["std"], "impute": "mean"}
                    for n in SENSOR_FEATURES
                ]
            },
            "postprocess": {"value_names": ["progression"]},
        },
        mqtt_extra={"persist_results": True},  # results through the outbox (seq assigned there)
    )
    proc = run_agent(cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    col.wait_status("offline", 15)

    seen = validate_all(col.snapshot())
    assert seen["result"] == len(rows), seen
    assert [r.get("imputed") for r in col.on("results") if r.get("imputed")] == [["bmi"]]
    assert col.on("stats")[-1]["imputed"] == {"bmi": 1}


@pytest.mark.parametrize("event_interval_s", [0, 3600], ids=["per-frame", "merged"])
def test_nan_prone_model_on_raw_pixels_events_match_schema(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, event_interval_s: int
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / FEW_DIGITS),
                "loop": False,
                "exit_when_done": True,
            },
            "model": {
                "path": str(bundled / "nan_prone.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "stretch", "color": "rgb"},  # raw 0..255 pixels: the model gives NaN
            "guard": {"event_interval_s": event_interval_s},
        },
    )
    proc = run_agent(cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    col.wait_status("offline", 15)

    seen = validate_all(col.snapshot())
    events = col.on("events")
    assert any(e["kind"] in ("nan_output", "inf_output") and "frame" in e["detail"] for e in events), events
    assert seen["result"] == 0, seen
    if event_interval_s:
        assert any(e["count"] > 1 for e in events), [(e["kind"], e["count"]) for e in events]
