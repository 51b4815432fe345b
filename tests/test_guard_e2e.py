"""The guard end to end: the real agent process, the real broker, the bundled models.

Every test provokes one fault on purpose, subscribes to `edge/<device>/#` before the agent
starts, and checks what a subscriber on the network sees: the event kind, a message that
names the cause in plain words, the evidence in `detail` (tensor, counts, input statistics,
model, frame), and what happens to results and status.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import INTERPRETER
from mqtt_helpers import REPO, AgentProcess, Collector, retained, run_agent, subprocess_env, write_config

from edge_agent.broker import LocalBroker

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DIGITS_PREPROCESS = {"scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
SENSOR_FEATURES = ("age", "bmi", "bp", "s5")
FAULT_SEVERITIES = {"warning", "error", "critical"}
TWENTY_FRAMES = "00[01]?_*.png"  # 0000..0019


# ---- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest(bundled: Path) -> dict[str, Any]:
    return json.loads((bundled / "manifest.json").read_text())["models"]  # type: ignore[no-any-return]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_section(bundled: Path, name: str, **extra: Any) -> dict[str, Any]:
    task = "classification" if name.startswith(("digits", "nan_prone")) else "regression"
    sec: dict[str, Any] = {"path": str(bundled / name), "task": task, "interpreter": INTERPRETER}
    if task == "classification":
        sec["labels"] = str(bundled / "digits_labels.txt")
    return {**sec, **extra}


def sensor_preprocess(manifest: dict[str, Any], model: str = "sensor", **extra: Any) -> dict[str, Any]:
    feats = manifest[model]["transform"]["features"]
    return {"features": [{"name": f["name"], "mean": f["mean"], "std": f["std"], **extra} for f in feats]}


def finish(proc: subprocess.CompletedProcess[str], col: Collector) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    col.wait_status("offline", 15)  # the agent's last publication: everything before it is here


def events_of(col: Collector, kind: str) -> list[dict[str, Any]]:
    return [e for e in col.on("events") if e["kind"] == kind]


def check_event(ev: dict[str, Any], model: Path | None = None) -> None:
    """The common payload, and (for a frame's fault) the model and frame evidence."""
    for key in ("seq", "ts", "kind", "severity", "message", "detail", "count"):
        assert key in ev, f"event without {key!r}: {ev}"
    assert ev["severity"] in FAULT_SEVERITIES, ev
    assert isinstance(ev["count"], int) and ev["count"] >= 1, ev
    if model is not None:
        assert ev["detail"]["model"] == {"name": model.name, "sha256": sha256_of(model), "delegate": "cpu"}, ev
        frame = ev["detail"]["frame"]
        assert isinstance(frame["seq"], int) and isinstance(frame["source"], str), frame
        assert "pixels" in frame or "values" in frame, frame
        assert frame["source"] in ev["message"], ev


def states(col: Collector) -> list[str]:
    """The observed status states, consecutive repeats folded."""
    out: list[str] = []
    for s in col.on("status"):
        if not out or out[-1] != s["state"]:
            out.append(s["state"])
    return out


def digit_frames(bundled: Path, pattern: str = TWENTY_FRAMES) -> list[str]:
    frames = sorted(p.name for p in (bundled / "digits_frames").glob(pattern))
    assert frames, pattern
    return frames


# ---- 1. raw pixels into a model trained on pixel/255 ---------------------------------------
def test_nan_prone_fed_raw_pixels_names_the_raw_pixels(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    frames = digit_frames(bundled)
    assert len(frames) == 20
    model = bundled / "nan_prone.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={  # no [preprocess], and nan_prone has no metadata: pixels go in as they are
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / TWENTY_FRAMES),
                "exit_when_done": True,
            },
            "model": model_section(bundled, "nan_prone.tflite"),
            "guard": {"event_interval_s": 0, "on_persistent_fault": "none"},
        },
    )
    finish(run_agent(cfg), col)

    assert col.on("results") == [], "a result was published from a NaN output"
    faults = events_of(col, "nan_output")
    per_frame = [e for e in faults if "frame" in e["detail"]]
    assert sorted(e["detail"]["frame"]["source"] for e in per_frame) == frames
    for e in per_frame:
        check_event(e, model)
        assert e["count"] == 1
        msg = e["message"]
        assert "raw 0-255 pixels" in msg and "not published" in msg, msg
        assert "1/255" in msg or "0.00392" in msg, msg  # what to set
        d = e["detail"]
        assert d["tensor"] and d["total"] == 10 and d["nan"] >= 1 and d["nan"] + d["posinf"] + d["neginf"] <= 10, d
        assert d["input"]["max"] > 20 and d["input"]["min"] >= 0 and d["input"]["nonfinite"] == 0, d
        assert d["frame"]["pixels"]["max"] > 200, d["frame"]
    assert not events_of(col, "inf_output")
    # the self-test at load (mid-gray) fails the same way, without a frame
    assert all("self-test" in e["message"] for e in faults if "frame" not in e["detail"])


# ---- 2. a missing sensor value, imputation off -----------------------------------------------
def test_missing_feature_with_imputation_off_skips_the_row(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, manifest: dict[str, Any]
) -> None:
    with (bundled / "sensor_heldout.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:10]
    data = tmp_path / "rows.csv"
    with data.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({**row, "bmi": ""} if i == 3 else row)
    missing = f"{data.name}:5"  # data row 3 is file line 5
    model = bundled / "sensor.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "csv", "path": str(data), "exit_when_done": True},
            "model": model_section(bundled, "sensor.tflite"),
            "preprocess": sensor_preprocess(manifest),
            "postprocess": {"value_names": ["progression"]},
            "guard": {"event_interval_s": 0, "on_input_nan": "skip"},
        },
    )
    finish(run_agent(cfg), col)

    results = {r["frame"]["source"] for r in col.on("results")}
    assert results == {f"{data.name}:{i + 2}" for i in range(10)} - {missing}
    assert all(math.isfinite(r["values"]["progression"]) for r in col.on("results"))
    (ev,) = events_of(col, "input_nan")
    check_event(ev, model)
    assert ev["message"].startswith(missing), ev
    assert "feature bmi missing" in ev["message"] and "skipped" in ev["message"], ev
    assert "on_input_nan" in ev["message"], ev
    assert ev["detail"]["features"] == ["bmi"], ev
    values = ev["detail"]["frame"]["values"]
    assert values[SENSOR_FEATURES.index("bmi")] is None and sum(v is None for v in values) == 1, values
    assert ev["detail"]["frame"]["source"] == missing
    assert not events_of(col, "nan_output")


# ---- 3. a quantized input fed a transform that saturates its quantization --------------------
def _uint8_wrong_scale(tmp_path: Path, bundled: Path, device: str, port: int, policy: str) -> Path:
    return write_config(
        tmp_path,
        device=device,
        port=port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / TWENTY_FRAMES),
                "exit_when_done": True,
            },
            "model": model_section(bundled, "digits_uint8.tflite"),
            # prepared = pixel: 0..255, but the input's quantization (scale ≈ 0.0187, zero point 114)
            # holds only about [-2.13, 2.63]
            "preprocess": {"scale": 1.0},
            # check every frame (the default samples frames within an invoke-time budget)
            "guard": {
                "event_interval_s": 0,
                "on_input_out_of_range": policy,
                "input_check_every": 1,
                "on_persistent_fault": "none",
            },
        },
    )


def _check_saturation_event(ev: dict[str, Any], model: Path) -> None:
    check_event(ev, model)
    msg = ev["message"]
    assert "quantized input saturates" in msg and "wrong scale or zero point" in msg, msg
    assert "zero point 114" in msg, msg
    q = ev["detail"]["quantization"]
    assert q["zero_point"] == 114 and math.isclose(q["scale"], 0.0186584, rel_tol=1e-4), q
    assert ev["detail"]["prepared"]["max"] > 2.7 and ev["detail"]["pixel"]["max"] > 200, ev["detail"]


@pytest.mark.parametrize("policy", ["skip", "warn"])
def test_wrong_input_quantization_is_input_out_of_range(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, policy: str
) -> None:
    frames = digit_frames(bundled)
    model = bundled / "digits_uint8.tflite"
    cfg = _uint8_wrong_scale(tmp_path, bundled, device, mosquitto.port, policy)
    finish(run_agent(cfg), col)

    events = events_of(col, "input_out_of_range")
    assert sorted(e["detail"]["frame"]["source"] for e in events) == frames
    for e in events:
        _check_saturation_event(e, model)
    results = col.on("results")
    if policy == "skip":
        assert results == []
        assert all(e["severity"] == "error" and "the frame was skipped" in e["message"] for e in events)
    else:
        # published, and flagged: every frame's result goes out beside its frame's warning
        assert sorted(r["frame"]["source"] for r in results) == frames
        assert all(e["severity"] == "warning" and "published but may be wrong" in e["message"] for e in events)


def test_check_with_a_sample_reports_the_wrong_quantization(
    tmp_path: Path, mosquitto: LocalBroker, device: str, bundled: Path
) -> None:
    cfg = _uint8_wrong_scale(tmp_path, bundled, device, mosquitto.port, "warn")
    sample = bundled / "digits_frames" / digit_frames(bundled)[0]
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check", "-c", str(cfg), "--sample", str(sample)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(sample.name + ":"))
    assert "input_out_of_range" in line and "quantized input saturates" in line, line
    assert "wrong scale or zero point" in line, line
    assert "verdict: FAULT found" in r.stdout, r.stdout


# ---- 4. a graph that makes NaN from in-range input -------------------------------------------
def test_unstable_model_nan_is_diagnosed_as_numerically_unstable(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path, manifest: dict[str, Any]
) -> None:
    entry = manifest["unstable"]
    nan_lines = set(entry["measured"]["nan_csv_lines"])
    n_rows = entry["measured"]["n"]
    bmi_limit = float(entry["engineered_feature"]["nan_when_raw"].split("<")[1])
    heldout = bundled / "sensor_heldout.csv"
    model = bundled / "unstable.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "csv", "path": str(heldout), "exit_when_done": True},
            "model": model_section(bundled, "unstable.tflite"),
            "preprocess": sensor_preprocess(manifest, "unstable"),
            "postprocess": {"value_names": ["progression"]},
            "guard": {"event_interval_s": 0, "on_persistent_fault": "none"},
        },
    )
    finish(run_agent(cfg), col)

    all_lines = set(range(2, n_rows + 2))
    results = col.on("results")
    assert {int(r["frame"]["source"].rsplit(":", 1)[1]) for r in results} == all_lines - nan_lines
    assert all(math.isfinite(r["values"]["progression"]) for r in results)
    faults = events_of(col, "nan_output")
    assert {int(e["detail"]["frame"]["source"].rsplit(":", 1)[1]) for e in faults} == nan_lines
    for e in faults:
        check_event(e, model)
        assert "numerically unstable" in e["message"] and "not published" in e["message"], e
        assert "raw 0-255" not in e["message"] and "not normalized" not in e["message"], e
        d = e["detail"]
        assert d["nan"] == d["total"] == 1, d
        # the input was in range (a few training std) and finite: the graph made the NaN
        assert d["input"]["nonfinite"] == 0 and -3 < d["input"]["min"] <= d["input"]["max"] < 3, d
        values = d["frame"]["values"]
        assert values[SENSOR_FEATURES.index("bmi")] < bmi_limit, values
    assert not events_of(col, "input_out_of_range")


# ---- 5. outputs stuck while the input changes ---------------------------------------------
def test_constant_prepared_input_gives_output_stuck(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / TWENTY_FRAMES),
                "exit_when_done": True,
            },
            "model": model_section(bundled, "digits_float.tflite"),
            # pixel * 1e-12 is below float32's resolution at 0.5: every prepared value is -0.5
            "preprocess": {"scale": 1e-12, "mean": [0.5], "std": [1.0]},
            "guard": {"event_interval_s": 0, "stuck_after": 5, "input_check_every": 1},
        },
    )
    finish(run_agent(cfg), col)

    model = bundled / "digits_float.tflite"
    stuck = events_of(col, "output_stuck")
    # frames 2..6 repeat frame 1's outputs, then 7..11, 12..16: one event per 5 frames
    assert len(stuck) == 3, stuck
    for e in stuck:
        check_event(e, model)
        assert e["severity"] == "warning", e
        msg = e["message"]
        assert "stayed identical over 5 checked frames while the input changed" in msg, msg
        assert "prepared input is constant" in msg and "scale, mean and std" in msg, msg
        assert e["detail"]["frames"] == 5, e
    # a warning: the (useless) results still go out, and they are all the same
    results = col.on("results")
    assert len(results) == 20
    assert len({json.dumps(r["top"]) for r in results}) == 1


# ---- 6. a frozen source ----------------------------------------------------------------------
def test_identical_frames_give_input_frozen(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    folder = tmp_path / "frozen"
    folder.mkdir()
    first = bundled / "digits_frames" / digit_frames(bundled)[0]
    for i in range(12):
        shutil.copy(first, folder / f"frame_{i:02d}.png")
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(folder), "exit_when_done": True},
            "model": model_section(bundled, "digits_float.tflite"),
            "preprocess": DIGITS_PREPROCESS,
            # every frame checked (by default the input checks are sampled within a time budget)
            "guard": {"event_interval_s": 0, "frozen_after": 5, "input_check_every": 1},
        },
    )
    finish(run_agent(cfg), col)

    model = bundled / "digits_float.tflite"
    frozen = events_of(col, "input_frozen")
    # 5 and 10 repeats of the first frame: frames 6 and 11
    assert [e["detail"]["frame"]["source"] for e in frozen] == ["frame_05.png", "frame_10.png"], frozen
    for e, n in zip(frozen, (6, 11), strict=True):
        check_event(e, model)
        assert e["severity"] == "warning"
        assert re.search(
            rf"the last {n} (checked )?frames from 'frame_{n - 1:02d}.png' were identical", e["message"]
        ), e
        assert "frozen" in e["message"], e
        assert e["detail"]["frames"] == n, e
    assert not events_of(col, "output_stuck"), "the same input giving the same output is not stuck"
    assert len(col.on("results")) == 12


# ---- 7. a fault storm ------------------------------------------------------------------------
def test_fault_storm_is_merged_into_a_few_events_whose_counts_add_up(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    n = 10_000
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "synthetic",
                "width": 32,
                "height": 32,
                "pattern": "noise",
                "max_frames": n,
                "exit_when_done": True,
            },
            "model": model_section(bundled, "nan_prone.tflite"),
            "guard": {"event_interval_s": 1, "on_persistent_fault": "none"},
        },
    )
    t0 = time.monotonic()
    proc = run_agent(cfg, timeout=60)
    run_s = time.monotonic() - t0
    finish(proc, col)

    assert col.on("results") == []
    faults = events_of(col, "nan_output")
    assert len(faults) <= run_s / 1 + 3, f"{len(faults)} events in {run_s:.1f} s"
    per_frame = [e for e in faults if "frame" in e["detail"]]
    assert sum(e["count"] for e in per_frame) == n, [e["count"] for e in faults]
    for e in per_frame:
        check_event(e, bundled / "nan_prone.tflite")
        assert "raw 0-255 pixels" in e["message"], e
        if e["count"] > 1:
            assert f"(repeated {e['count']}×)" in e["message"], e
    # the log is merged like the events topic: one line per published event, not 10,000
    logged = [ln for ln in proc.stderr.splitlines() if "nan_output:" in ln]
    assert len(logged) == len(faults), f"{len(logged)} log lines for {len(faults)} events"
    stats = col.on("stats")[-1]
    assert stats["frames"] == n and stats["results"] == 0, stats
    # the faults counter holds every nan_output raised: the frames' and the load-time self-test's
    selftest = sum(e["count"] for e in faults if "frame" not in e["detail"])
    assert selftest <= 1
    assert stats["faults"]["nan_output"] == n + selftest, stats["faults"]


# ---- 8. degraded, then online again ----------------------------------------------------------
def test_status_degrades_on_faults_and_recovers_on_good_frames(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in digit_frames(bundled)[:8]:
        shutil.copy(bundled / "digits_frames" / name, folder / f"a_{name}")
    black = [f"b_black_{i:02d}.png" for i in range(15)]
    for name in black:
        cv2.imwrite(str(folder / name), np.zeros((32, 32, 3), np.uint8))
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(folder), "exit_when_done": True},
            "model": model_section(bundled, "nan_prone.tflite"),  # raw pixels: NaN, except on black
            "guard": {"event_interval_s": 0, "degrade_after": 5, "recover_after": 10, "on_persistent_fault": "none"},
        },
        mqtt_extra={"results_qos": 1},  # everything at QoS 1: the broker keeps the publication order
    )
    finish(run_agent(cfg), col)

    seq = states(col)
    if seq and seq[0] == "degraded":  # announced on connect, before the model is loaded
        seq = seq[1:]
    assert seq == ["online", "degraded", "online", "offline"], col.on("status")
    assert sorted(r["frame"]["source"] for r in col.on("results")) == black
    nan = [e for e in events_of(col, "nan_output") if "frame" in e["detail"]]
    assert len(nan) == 8 and all(e["detail"]["frame"]["source"].startswith("a_") for e in nan)
    # the order on the wire: degraded after the 5th fault, online after the 10th good frame
    msgs = col.snapshot()
    at = {id(m.payload): i for i, m in enumerate(msgs)}
    status = [(i, m.payload["state"]) for i, m in enumerate(msgs) if m.leaf == "status"]
    degraded_at = next(i for i, s in status if s == "degraded" and i > min(j for j, t in status if t == "online"))
    online_again = next(i for i, s in status if s == "online" and i > degraded_at)
    assert at[id(nan[4])] < degraded_at < at[id(nan[5])]
    results = [i for i, m in enumerate(msgs) if m.leaf == "results"]
    assert results[9] < online_again < results[10], "not online again right after the 10th good frame"


# ---- 9. the persistent-fault actions ---------------------------------------------------------
def test_persistent_fault_switches_to_the_fallback_model(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    fallback = bundled / "digits_float.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / TWENTY_FRAMES),
                "loop": True,
                "fps": 50,
            },
            "model": model_section(bundled, "nan_prone.tflite", fallback_path=str(fallback)),
            "guard": {
                "event_interval_s": 0,
                "degrade_after": 10,
                "act_after": 10,
                "recover_after": 10,
                "on_persistent_fault": "fallback",
            },
        },
    )
    with AgentProcess(cfg) as agent:
        ev = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "model_fallback", 30, "model_fallback")
        res = col.wait_for(lambda m: m.leaf == "results", 30, "a result from the fallback", start=col.mark())
        col.wait_status("online", 30, after=col.snapshot().index(ev))
        assert retained(mosquitto.port, f"edge/{device}/status")["state"] == "online"
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    col.wait_status("offline", 15)

    e = ev.payload
    check_event(e)
    assert "10 consecutive faulty frames" in e["message"], e
    assert "switched from nan_prone.tflite to the fallback model digits_float.tflite" in e["message"], e
    assert e["detail"]["model"] == {"name": fallback.name, "sha256": sha256_of(fallback), "delegate": "cpu"}
    assert res.payload["model"] == {"name": fallback.name, "sha256": sha256_of(fallback)}
    results = col.on("results")
    assert all(r["model"]["name"] == fallback.name for r in results), "a result before the switch"
    # exactly the 10 faulty frames before the switch, none after
    nan = [x for x in events_of(col, "nan_output") if "frame" in x["detail"]]
    assert len(nan) == 10 and all(x["detail"]["model"]["name"] == "nan_prone.tflite" for x in nan)
    assert states(col)[-3:] == ["degraded", "online", "offline"], col.on("status")


def test_persistent_fault_reloads_the_model(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    model = bundled / "nan_prone.tflite"
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / TWENTY_FRAMES),
                "loop": True,
                "fps": 50,
            },
            "model": model_section(bundled, "nan_prone.tflite"),
            "guard": {"event_interval_s": 0, "degrade_after": 10, "act_after": 10, "on_persistent_fault": "reload"},
        },
    )
    with AgentProcess(cfg) as agent:
        first = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "model_reloaded", 30, "a reload")
        col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "model_reloaded",
            30,
            "a second reload",
            start=col.snapshot().index(first) + 1,
        )
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    col.wait_status("offline", 15)

    reloads = events_of(col, "model_reloaded")
    assert len(reloads) >= 2
    for i, e in enumerate(reloads, 1):
        check_event(e)
        # the streak goes on across reloads: 10, 20, ... consecutive faults
        assert re.search(
            rf"\b{10 * i} consecutive faulty frames: reloaded nan_prone.tflite in a fresh interpreter", e["message"]
        ), e
        assert e["detail"]["model"] == {"name": model.name, "sha256": sha256_of(model), "delegate": "cpu"}
    assert col.on("results") == [], "a reloaded NaN model published a result"
    assert "degraded" in states(col)
