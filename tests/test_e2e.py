"""End to end: the real agent process, the real broker, real models and frames.

Every test writes its own config (unique device id and state_dir) into tmp_path, subscribes
to `edge/<device>/#` before the agent starts, and reads what a subscriber on the network sees.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, retained, run_agent, write_config

from edge_agent.broker import LocalBroker

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DIGITS_PREPROCESS = {
    "resize": "stretch",
    "interpolation": "linear",
    "color": "rgb",
    "scale": 1 / 255,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
SENSOR_FEATURES = ("age", "bmi", "bp", "s5")
FAULT_SEVERITIES = {"warning", "error", "critical"}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truth_of(source: str) -> int:
    """NNNN_L.png → L."""
    return int(Path(source).stem.rsplit("_", 1)[1])


def read_labels(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def assert_clean_finish(proc: Any, col: Collector) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    # `offline` is the agent's last publication: once it is here, everything before it is too
    col.wait_status("offline", 15)


def check_event_shape(ev: dict[str, Any]) -> None:
    for key in ("seq", "ts", "kind", "severity", "message", "detail", "count"):
        assert key in ev, f"event without {key!r}: {ev}"
    assert isinstance(ev["seq"], int)
    assert isinstance(ev["ts"], int | float)
    assert ev["severity"] in {"info", *FAULT_SEVERITIES}, ev
    assert isinstance(ev["message"], str) and ev["message"], ev
    assert isinstance(ev["detail"], dict), ev
    assert isinstance(ev["count"], int) and ev["count"] >= 1, ev


def check_increasing(values: list[Any], what: str) -> None:
    assert all(a < b for a, b in itertools.pairwise(values)), f"{what} not increasing: {values[:20]}..."


# ---- 1. the held-out digits ---------------------------------------------------------------
@pytest.mark.parametrize("model_file", ["digits_float.tflite", "digits_uint8.tflite"])
def test_digits_heldout_accuracy_and_result_payload(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, model_file: str
) -> None:
    frames_dir = bundled / "digits_frames"
    frames = sorted(p.name for p in frames_dir.glob("*.png"))
    assert len(frames) >= 300, "the held-out frames are missing"
    model = bundled / model_file
    labels = read_labels(bundled / "digits_labels.txt")
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(frames_dir), "loop": False, "exit_when_done": True},
            "model": {
                "path": str(model),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
            "postprocess": {"top_k": 3},
        },
    )

    proc = run_agent(cfg)
    assert_clean_finish(proc, col)

    results = col.on("results")
    assert results, "no results were published"
    sha = sha256_of(model)
    for r in results:
        for key in ("seq", "ts", "frame", "model", "latency_ms", "task", "top"):
            assert key in r, f"result without {key!r}: {r}"
        assert isinstance(r["ts"], int | float)
        assert set(r["frame"]) >= {"seq", "ts", "source"}, r["frame"]
        assert r["frame"]["source"] in frames, r["frame"]
        assert r["frame"]["ts"] <= r["ts"], r
        assert r["model"] == {"name": model_file, "sha256": sha}
        assert isinstance(r["latency_ms"], dict) and r["latency_ms"], r
        assert all(isinstance(v, int | float) and v >= 0 for v in r["latency_ms"].values()), r["latency_ms"]
        assert r["task"] == "classification"
        top = r["top"]
        assert 1 <= len(top) <= 3, r
        for t in top:
            assert set(t) == {"index", "label", "score"}, t
            assert isinstance(t["index"], int) and 0 <= t["index"] < len(labels), t
            assert t["label"] == labels[t["index"]], t
            assert isinstance(t["score"], int | float) and math.isfinite(t["score"]), t
        scores = [t["score"] for t in top]
        assert scores == sorted(scores, reverse=True), top
    check_increasing([r["seq"] for r in results], "results seq")
    check_increasing([r["frame"]["seq"] for r in results], "frame seq")
    sources = [r["frame"]["source"] for r in results]
    assert len(sources) == len(set(sources)), "a frame was published twice"

    # accuracy over the frames FED: a frame without a result counts as wrong
    correct = sum(1 for r in results if r["top"][0]["index"] == truth_of(r["frame"]["source"]))
    assert correct / len(frames) >= 0.95, f"{correct}/{len(frames)} correct ({len(results)} results)"

    events = col.on("events")
    assert not [e for e in events if e["kind"] in ("nan_output", "inf_output", "model_error")], events


# ---- 2. Coral's MobileNet v2, transform and labels from its metadata ----------------------
def test_coral_mobilenet_uses_metadata_normalization_and_embedded_labels(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("cat.bmp", "grace_hopper.bmp"):
        shutil.copy(coral / name, frames / name)
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    # no [preprocess] (mean/std 127.5 come from the metadata), no labels (the embedded ones)
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(frames), "loop": False, "exit_when_done": True},
            "model": {"path": str(model), "task": "classification", "interpreter": INTERPRETER},
            "postprocess": {"top_k": 3},
        },
    )

    proc = run_agent(cfg)
    assert_clean_finish(proc, col)

    top1 = {r["frame"]["source"]: r["top"][0]["label"] for r in col.on("results")}
    assert top1 == {"cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform"}
    assert all(r["model"]["sha256"] == sha256_of(model) for r in col.on("results"))


# ---- 3. the NaN-prone model ---------------------------------------------------------------
NAN_SUBSET = "00[0-4]*_*.png"


@pytest.mark.parametrize("event_interval_s", [0, 3600], ids=["per-frame", "merged"])
def test_nan_prone_model_fed_raw_pixels_raises_faults_and_publishes_nothing(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, event_interval_s: int
) -> None:
    frames = sorted(p.name for p in (bundled / "digits_frames").glob(NAN_SUBSET))
    assert frames
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / NAN_SUBSET),
                "loop": False,
                "exit_when_done": True,
            },
            "model": {
                "path": str(bundled / "nan_prone.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            # the mistake under test: no scale, raw 0..255 pixels reach a model trained on pixel/255
            "preprocess": {"resize": "stretch", "color": "rgb"},
            "guard": {"event_interval_s": event_interval_s},
        },
    )

    proc = run_agent(cfg)
    assert_clean_finish(proc, col)

    assert col.on("results") == [], "a result was published from a NaN output"
    events = col.on("events")
    faults = [e for e in events if e["kind"] in ("nan_output", "inf_output")]
    assert faults, f"no nan_output/inf_output event; events: {events}"
    for e in faults:
        check_event_shape(e)
        assert e["severity"] in FAULT_SEVERITIES, e
        # the likely cause, in words an operator can act on
        assert "255" in e["message"] and re.search(r"scale|normali[sz]", e["message"], re.I), e["message"]
        d = e["detail"]
        assert {"nan", "posinf", "neginf", "total"} <= set(d), d
        assert d["nan"] + d["posinf"] + d["neginf"] >= 1 and d["total"] == 10, d
    check_increasing([e["seq"] for e in events], "events seq")

    # the frames' faults (the self-test at load may add one more, without a frame) add up
    per_frame = [e for e in faults if "frame" in e["detail"]]
    assert sum(e["count"] for e in per_frame) == len(frames), [(e["count"], e["detail"].get("frame")) for e in faults]
    if event_interval_s == 0:
        assert sorted(e["detail"]["frame"]["source"] for e in per_frame) == frames
        assert all(e["count"] == 1 for e in faults)


def test_nan_prone_model_fed_correctly_gives_results_and_no_faults(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    frames = sorted(p.name for p in (bundled / "digits_frames").glob(NAN_SUBSET))
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / NAN_SUBSET),
                "loop": False,
                "exit_when_done": True,
            },
            "model": {
                "path": str(bundled / "nan_prone.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "stretch", "color": "rgb", "scale": 1 / 255, "mean": [0.0], "std": [1.0]},
            "guard": {"event_interval_s": 0},
        },
    )

    proc = run_agent(cfg)
    assert_clean_finish(proc, col)

    results = col.on("results")
    assert sorted(r["frame"]["source"] for r in results) == frames
    assert all(math.isfinite(t["score"]) for r in results for t in r["top"])
    correct = sum(1 for r in results if r["top"][0]["index"] == truth_of(r["frame"]["source"]))
    assert correct / len(frames) >= 0.9, f"{correct}/{len(frames)}"
    bad = [e for e in col.on("events") if e["kind"] in ("nan_output", "inf_output")]
    assert bad == [], bad


# ---- 4. the sensor regression model with missing values -----------------------------------
def _sensor_manifest(bundled: Path) -> dict[str, Any]:
    return json.loads((bundled / "manifest.json").read_text())["models"]["sensor"]  # type: ignore[no-any-return]


def _blanked(i: int) -> set[str]:
    """Which features row i loses: a fixed, varied pattern (none, one, two, all four)."""
    if i % 9 == 4:
        return set(SENSOR_FEATURES)
    out = set()
    if i % 3 == 1:
        out.add(SENSOR_FEATURES[i % 4])
    if i % 5 == 2:
        out |= {"age", "s5"}
    return out


def test_sensor_regression_imputes_missing_values_like_training(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    from edge_agent.runtime.backends import select_backend  # noqa: PLC0415

    manifest = _sensor_manifest(bundled)
    feats = {f["name"]: f for f in manifest["transform"]["features"]}
    with (bundled / "sensor_heldout.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:40]
    csv_path = tmp_path / "sensor_blanked.csv"
    blanks: dict[str, set[str]] = {}
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*SENSOR_FEATURES, "progression"])
        w.writeheader()
        for i, row in enumerate(rows):
            gone = _blanked(i)
            w.writerow({k: ("" if k in gone else v) for k, v in row.items()})
            blanks[f"{csv_path.name}:{i + 2}"] = gone  # line 1 is the header
    assert any(blanks.values()) and any(not b for b in blanks.values())

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
    )

    proc = run_agent(cfg)
    assert_clean_finish(proc, col)

    # the reference: the same rows imputed by hand, standardized, through a bare interpreter
    backend = select_backend(INTERPRETER)
    interp = backend.interpreter_class(model_path=str(bundled / "sensor.tflite"))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    means = np.array([feats[n]["mean"] for n in SENSOR_FEATURES], dtype=np.float64)
    stds = np.array([feats[n]["std"] for n in SENSOR_FEATURES], dtype=np.float64)
    expected: dict[str, float] = {}
    for i, row in enumerate(rows):
        gone = _blanked(i)
        x = np.array([feats[n]["mean"] if n in gone else float(row[n]) for n in SENSOR_FEATURES], dtype=np.float64)
        z = (x - means) / stds
        interp.set_tensor(inp["index"], z.astype(np.float32).reshape(inp["shape"]))
        interp.invoke()
        expected[f"{csv_path.name}:{i + 2}"] = float(interp.get_tensor(out["index"]).ravel()[0])

    results = {r["frame"]["source"]: r for r in col.on("results")}
    assert set(results) == set(expected), f"missing results for {sorted(set(expected) - set(results))}"
    for src, r in results.items():
        assert r["task"] == "regression"
        assert set(r["values"]) == {"progression"}, r
        got = r["values"]["progression"]
        assert math.isclose(got, expected[src], rel_tol=1e-4), f"{src}: published {got}, model gives {expected[src]}"
        assert set(r.get("imputed") or []) == blanks[src], f"{src}: imputed {r.get('imputed')}, blanked {blanks[src]}"
        assert r["model"] == {"name": "sensor.tflite", "sha256": sha256_of(bundled / "sensor.tflite")}
    # imputations are counted per feature in the stats (the last stats are published at the stop)
    per_feature = {n: sum(n in b for b in blanks.values()) for n in SENSOR_FEATURES}
    last_stats = list(col.on("stats"))[-1]
    assert last_stats["imputed"] == {n: c for n, c in per_feature.items() if c}


# ---- 5. a model missing at start, then put in place -----------------------------------------
def test_missing_model_degraded_then_online_when_file_appears(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    model = models / "digits_uint8.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames" / NAN_SUBSET), "loop": True, "fps": 20},
            "model": {
                "path": str(model),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
                "retry_interval_s": 0.5,
            },
            "preprocess": DIGITS_PREPROCESS,
        },
    )
    status_topic = f"edge/{device}/status"

    with AgentProcess(cfg) as agent:
        col.wait_status("degraded", 30)
        ev = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "model_error", 30, "a model_error event"
        )
        check_event_shape(ev.payload)
        assert ev.payload["severity"] in FAULT_SEVERITIES
        assert model.name in ev.payload["message"], ev.payload
        assert retained(mosquitto.port, status_topic)["state"] == "degraded"
        assert agent.running(), agent.output
        # while the model is missing the agent never claims to be online
        assert not [s for s in col.on("status") if s["state"] == "online"], col.on("status")
        assert col.on("results") == []

        mark = col.mark()
        staging = models / ".incoming.tmp"
        shutil.copy(bundled / "digits_uint8.tflite", staging)
        os.replace(staging, model)

        online = col.wait_status("online", 30, after=mark)
        assert online.payload["model"]["sha256"] == sha256_of(model), online.payload
        res = col.wait_for(lambda m: m.leaf == "results", 30, "a result", start=mark)
        assert res.payload["model"] == {"name": model.name, "sha256": sha256_of(model)}
        assert retained(mosquitto.port, status_topic)["state"] == "online"
        assert agent.running(), "the agent restarted or died"

        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    col.wait_status("offline", 15, after=mark)
    assert retained(mosquitto.port, status_topic)["state"] == "offline"


# ---- 6. the Last Will -----------------------------------------------------------------------
def test_last_will_publishes_retained_offline_when_killed(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames" / NAN_SUBSET), "loop": True, "fps": 5},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "interpreter": INTERPRETER,
            },
            "preprocess": DIGITS_PREPROCESS,
        },
        mqtt_extra={"keepalive": 5},
    )
    status_topic = f"edge/{device}/status"

    with AgentProcess(cfg) as agent:
        col.wait_status("online", 30)
        assert retained(mosquitto.port, status_topic)["state"] == "online"
        mark = col.mark()
        agent.proc.send_signal(signal.SIGKILL)
        assert agent.wait(10) == -signal.SIGKILL
    will = col.wait_status("offline", 15, after=mark)
    assert will.payload["state"] == "offline"
    assert retained(mosquitto.port, status_topic)["state"] == "offline"


# ---- 7. a model that fails inside invoke() ---------------------------------------------------
def test_model_failing_in_invoke_raises_model_error_and_keeps_running(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    # invoke_error.tflite takes float32 [1, 4]: four sensor columns fit it
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "csv",
                "path": str(bundled / "sensor_heldout.csv"),
                "columns": list(SENSOR_FEATURES),
                "loop": True,
                "fps": 20,
            },
            "model": {
                "path": str(bundled / "invoke_error.tflite"),
                "task": "raw",
                "interpreter": INTERPRETER,
                "retry_interval_s": 0.5,
            },
            "guard": {"event_interval_s": 0},
        },
    )
    status_topic = f"edge/{device}/status"

    with AgentProcess(cfg) as agent:
        first = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "model_error", 30, "a model_error event"
        )
        # it keeps going (and keeps retrying): a second one arrives from the same process
        col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "model_error" and m is not first,
            30,
            "a second model_error event",
        )
        errors = [e for e in col.on("events") if e["kind"] == "model_error"]
        for e in errors:
            check_event_shape(e)
            assert e["severity"] in FAULT_SEVERITIES
            assert "invoke" in e["message"], e
        assert agent.running(), agent.output
        assert col.on("results") == []
        assert retained(mosquitto.port, status_topic)["state"] == "degraded"
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    assert retained(mosquitto.port, status_topic)["state"] == "offline"


# ---- 8. an invalid config -------------------------------------------------------------------
def test_invalid_config_exits_2_with_one_line_per_problem(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[device]\nid = "{device}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[source]\nkind = "images"\n'  # no path
        '[model]\npath = "model.tflite"\ntask = "bogus"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = 70000\nbogus_key = 1\n'
    )
    proc = run_agent(cfg)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    expected = {"source.path": "source", "model.task": "task", "mqtt.port": "70000", "mqtt.bogus_key": "bogus_key"}
    assert len(lines) == len(expected), lines
    for key, word in expected.items():
        assert any(ln.startswith(key) and word in ln for ln in lines), f"no line for {key}: {lines}"
    assert col.on("status") == [], "an invalid config must not go on the air"


def test_unparsable_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[model]\npath = "model.tflite\n')
    proc = run_agent(cfg)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "config.toml" in lines[0], lines
