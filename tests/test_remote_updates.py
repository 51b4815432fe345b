"""Signed remote updates end to end: the real agent process, a real mosquitto, a local HTTP
server for model downloads. What an operator relies on: a valid update takes effect on the next
frames and survives a restart; a model swap leaves no gap; a bad model is refused or rolled back
with the old one running; every hostile document gets its own rejection and changes nothing; a
SIGKILL in the middle of an apply leaves the old config or the new one, never a mix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from conftest import BUNDLED, CORAL, INTERPRETER
from mqtt_helpers import AgentProcess, Collector, Message, write_config
from remote_helpers import KEY, http_server, publish, signed

from edge_agent.broker import LocalBroker

TRANSFORM = {
    k: v
    for k, v in json.loads((BUNDLED / "manifest.json").read_text())["models"]["digits_float"]["transform"].items()
    if k != "kind"
}
FPS = 20


def agent_config(tmp_path: Path, device: str, port: int, **remote: Any) -> Path:
    key_file = tmp_path / "update.key"
    key_file.write_bytes(KEY)
    (tmp_path / "models").mkdir(exist_ok=True)
    return write_config(
        tmp_path,
        device=device,
        port=port,
        sections={
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": FPS},
            "model": {
                "path": str(BUNDLED / "digits_uint8.tflite"),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "interpreter": INTERPRETER,
            },
            "preprocess": TRANSFORM,
            "guard": {"event_interval_s": 0},
            "remote": {
                "enabled": True,
                "hmac_key_file": str(key_file),
                "model_dir": str(tmp_path / "models"),
                "probation_frames": 20,
                "rollback_after_faults": 3,
                **remote,
            },
        },
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer(col: Collector, start: int, timeout: float = 30) -> Message:
    return col.wait_for(lambda m: m.leaf == "config/result", timeout, "a config/result", start=start)


def results_from(col: Collector, start: int) -> list[dict[str, Any]]:
    return [m.payload for m in col.snapshot()[start:] if m.leaf == "results"]


def running_model(col: Collector, start: int, n: int = 3) -> str:
    """The model named by n results in a row, from `start` on."""
    col.wait_for(lambda m: m.leaf == "results", 20, "results", start=start)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rs = results_from(col, start)
        if len(rs) >= n:
            names = {r["model"]["name"] for r in rs[-n:]}
            if len(names) == 1:
                return names.pop()
        time.sleep(0.05)
    raise AssertionError("no steady model")


def test_update_applies_survives_a_restart_and_shows_in_config_state(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    cfg = agent_config(tmp_path, device, mosquitto.port)
    base = f"edge/{device}"
    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results" and len(m.payload["top"]) == 3, 30, "top-3 results")
        state0 = col.wait_for(lambda m: m.leaf == "config/state", 10, "config/state")
        assert state0.retain or state0.payload["version"] == 0
        assert state0.payload["version"] == 0
        mark = col.mark()
        publish(mosquitto.port, f"{base}/config/set", signed(1, {"postprocess": {"top_k": 1, "threshold": 0.9}}))
        ans = answer(col, mark)
        assert ans.payload == {"version": 1, "applied": True, "errors": []}
        after = col.snapshot().index(ans)
        col.wait_for(lambda m: m.leaf == "results", 10, "results after the update", start=after)
        time.sleep(1.0)
        later = results_from(col, after)[2:]  # frames in flight at the answer aside
        assert len(later) >= 10
        assert all(len(r["top"]) <= 1 and all(t["score"] >= 0.9 for t in r["top"]) for r in later), later[:3]
        assert any(r["top"] for r in later)
        state = col.wait_for(
            lambda m: m.leaf == "config/state" and m.payload["version"] == 1, 10, "config/state v1", start=mark
        )
        assert state.payload["config"]["postprocess"]["top_k"] == 1
        assert state.payload["config"]["postprocess"]["threshold"] == 0.9
        assert "hmac_key_file" not in state.payload["config"]["remote"]
        event = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "config_applied", 10, "config_applied", start=mark
        )
        assert event.payload["detail"]["keys"] == ["postprocess.threshold", "postprocess.top_k"]
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    stored = json.loads((tmp_path / "state" / "applied.json").read_text())
    assert stored["version"] == 1 and stored["overlay"] == {"postprocess": {"top_k": 1, "threshold": 0.9}}

    mark = col.mark()
    with AgentProcess(cfg) as agent:  # restarted: the update is still in effect
        state = col.wait_for(lambda m: m.leaf == "config/state", 20, "config/state after the restart", start=mark)
        assert state.payload["version"] == 1
        col.wait_for(lambda m: m.leaf == "results", 30, "results after the restart", start=mark)
        time.sleep(0.5)
        assert all(len(r["top"]) <= 1 for r in results_from(col, mark))
        # the running version again: answered applied, "already applied", nothing changes
        mark2 = col.mark()
        publish(mosquitto.port, f"{base}/config/set", signed(1, {"postprocess": {"top_k": 1, "threshold": 0.9}}))
        again = answer(col, mark2)
        assert again.payload == {"version": 1, "applied": True, "errors": [], "note": "already applied"}
        assert agent.running()


def test_model_update_by_url_swaps_without_a_gap(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    served = tmp_path / "www"
    served.mkdir()
    data = (BUNDLED / "digits_float.tflite").read_bytes()
    (served / "digits_float.tflite").write_bytes(data)
    cfg = agent_config(tmp_path, device, mosquitto.port)
    with http_server(served) as url, AgentProcess(cfg) as agent:
        assert running_model(col, 0) == "digits_uint8.tflite"
        mark = col.mark()
        publish(
            mosquitto.port,
            f"edge/{device}/config/set",
            signed(1, {"model": {"path": f"{url}/digits_float.tflite", "sha256": sha(data)}}),
        )
        ans = answer(col, mark)
        assert ans.payload["applied"] is True, ans.payload
        new_name = f"{sha(data)}.tflite"
        assert running_model(col, col.snapshot().index(ans), n=10) == new_name
        time.sleep(1.5)  # past the probation (20 frames at 20 fps)
        rs = results_from(col, 0)
        switch = next(i for i, r in enumerate(rs) if r["model"]["name"] == new_name)
        before, after = rs[switch - 1], rs[switch]
        seq_gap = after["frame"]["seq"] - before["frame"]["seq"]
        time_gap = after["ts"] - before["ts"]
        print(
            f"\nmodel swap: frame seq {before['frame']['seq']} → {after['frame']['seq']}, {time_gap * 1000:.0f} ms apart"
        )
        assert seq_gap <= 2, (before, after)  # no frame lost beyond the one in flight
        assert time_gap <= 2.5 / FPS, time_gap  # two frame intervals, with the pacing's jitter
        assert all(r["model"]["name"] == new_name for r in rs[switch:])
        correct = sum(1 for r in rs[switch:] if str(r["top"][0]["index"]) == r["frame"]["source"].split("_")[1][0])
        assert correct >= 0.9 * len(rs[switch:])
        assert (tmp_path / "models" / new_name).read_bytes() == data
        assert not [e for e in col.on("events") if e["kind"] == "model_error"]
        assert agent.running()


def bad_models(tmp_path: Path) -> list[tuple[str, bytes, str, str]]:
    """(name, served bytes, sha256 given, what the answer must say)."""
    good = (BUNDLED / "digits_float.tflite").read_bytes()
    cut = good[: len(good) // 2]
    cases = [
        ("wrong_hash.tflite", good, "0" * 64, "model.sha256"),
        ("truncated.tflite", cut, sha(cut), "model"),
        ("vector_input.tflite", (BUNDLED / "sensor.tflite").read_bytes(), "", "model"),
    ]
    edgetpu = CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    if edgetpu.is_file():  # the Coral test data beside the repository
        cases.append(("edgetpu_only.tflite", edgetpu.read_bytes(), "", "model"))
    return [(n, b, s or sha(b), k) for n, b, s, k in cases]


def test_bad_models_are_refused_or_rolled_back_with_the_old_one_running(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    served = tmp_path / "www"
    served.mkdir()
    cfg = agent_config(tmp_path, device, mosquitto.port)
    topic = f"edge/{device}/config/set"
    with http_server(served) as url, AgentProcess(cfg) as agent:
        assert running_model(col, 0) == "digits_uint8.tflite"
        for version, (name, data, digest, key) in enumerate(bad_models(tmp_path), start=1):
            (served / name).write_bytes(data)
            mark = col.mark()
            publish(mosquitto.port, topic, signed(version, {"model": {"path": f"{url}/{name}", "sha256": digest}}))
            ans = answer(col, mark)
            assert ans.payload["applied"] is False, (name, ans.payload)
            assert ans.payload["errors"][0]["key"] == key, (name, ans.payload)
            print(f"\n{name}: {ans.payload['errors'][0]['message']}")
            assert running_model(col, col.mark()) == "digits_uint8.tflite", name
        assert not (tmp_path / "state" / "applied.json").exists(), "a refused update was stored"
        assert not list((tmp_path / "models").glob(".*.part"))

        # NaN-prone (exp of its input): fed raw pixels, mid-gray already overflows, and the
        # self-test refuses it
        data = (BUNDLED / "nan_prone.tflite").read_bytes()
        (served / "nan_prone.tflite").write_bytes(data)
        nan_prone = {"path": f"{url}/nan_prone.tflite", "sha256": sha(data)}
        raw = {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
        mark = col.mark()
        publish(mosquitto.port, topic, signed(8, {"model": nan_prone, "preprocess": raw}))
        refused = answer(col, mark)
        assert refused.payload["applied"] is False and refused.payload["errors"][0]["key"] == "model"
        assert "self-test" in refused.payload["errors"][0]["message"], refused.payload
        # fed half the pixel values, mid-gray passes the self-test but bright strokes overflow:
        # the first frames fail the guard and the update is rolled back within its probation
        half = {"scale": 0.5, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
        mark = col.mark()
        publish(mosquitto.port, topic, signed(9, {"model": nan_prone, "preprocess": half}))
        first = answer(col, mark)
        assert first.payload == {"version": 9, "applied": True, "errors": []}
        rolled = answer(col, col.snapshot().index(first) + 1)
        assert rolled.payload["version"] == 9 and rolled.payload["applied"] is False
        assert rolled.payload["errors"][0]["key"] == "model"
        assert rolled.payload["errors"][0]["message"].startswith("rolled back: 4 faulty frames")
        ev = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["detail"].get("reason") == "rolled_back", 10, "rollback event"
        )
        assert ev.payload["kind"] == "model_error"
        stored = json.loads((tmp_path / "state" / "applied.json").read_text())
        assert stored["version"] == 9 and stored["overlay"] == {}, stored
        # the rolled-back version is not taken again
        mark = col.mark()
        publish(mosquitto.port, topic, signed(9, {"model": nan_prone, "preprocess": half}))
        again = answer(col, mark).payload
        assert again["applied"] is False and "rolled back" in again["errors"][0]["message"], again
        assert running_model(col, col.mark(), n=5) == "digits_uint8.tflite"
        assert agent.running()


def corpus(tmp_path: Path, url: str) -> list[tuple[str, bytes | dict[str, Any], str, str]]:
    """(what, payload, the key the answer names, a part of its message)."""
    models = tmp_path / "models"
    (models / "evil.tflite").symlink_to(BUNDLED / "digits_float.tflite")
    good_sha = sha((BUNDLED / "digits_float.tflite").read_bytes())
    ok = signed(6, {"postprocess": {"top_k": 1}})
    altered = dict(ok, config={"postprocess": {"top_k": 2}})
    flipped = dict(ok, sig=("0" if ok["sig"][0] != "0" else "1") + ok["sig"][1:])
    deep: Any = {}
    for _ in range(20):
        deep = {"x": deep}
    return [
        ("not JSON", b"{version: 6", "document", "not valid JSON"),
        ("not UTF-8", b'{"version": 6, "config": {}, "sig": "\xff\xfe"}', "document", "not UTF-8"),
        (
            "huge",
            json.dumps({"version": 6, "config": {"x": "a" * 300_000}, "sig": "0" * 64}).encode(),
            "document",
            "exceeds",
        ),
        ("nesting beyond the parser", b"[" * 100_000 + b"]" * 100_000, "document", "nested too deeply"),
        ("deep nesting", signed(6, {"postprocess": deep}), "document", "nested more than"),
        ("an array", b"[1, 2, 3]", "document", "must be a JSON object"),
        ("missing sig", {"version": 6, "config": {"postprocess": {"top_k": 1}}}, "sig", "missing"),
        ("missing version", {"config": {}, "sig": ok["sig"]}, "version", "missing"),
        (
            "wrong key",
            signed(6, {"postprocess": {"top_k": 1}}, key=b"another-key-of-16-bytes"),
            "sig",
            "does not match",
        ),
        ("flipped sig", flipped, "sig", "does not match"),
        ("config altered after signing", altered, "sig", "does not match"),
        ("short sig", dict(ok, sig="abc"), "sig", "64 hexadecimal"),
        ("extra field", dict(ok, extra=1), "document", "unknown field"),
        ("replayed version", signed(4, {"postprocess": {"top_k": 1}}), "version", "not greater than"),
        ("version as text", {**signed(6, {}), "version": "6"}, "version", "must be an integer"),
        ("version true", {**signed(6, {}), "version": True}, "version", "must be an integer"),
        ("version float", {**signed(6, {}), "version": 6.0}, "version", "must be an integer"),
        ("version zero", signed(0, {}), "version", "must be from 1"),
        ("config not an object", {"version": 6, "config": [1], "sig": ok["sig"]}, "config", "must be an object"),
        ("unknown key", signed(6, {"postprocess": {"nope": 1}}), "postprocess.nope", "unknown key"),
        ("unknown section", signed(6, {"bogus": {"a": 1}}), "bogus", "unknown key"),
        ("broker not allowed", signed(6, {"mqtt": {"host": "evil.example"}}), "mqtt.host", "not allowed"),
        ("remote.* not allowed", signed(6, {"remote": {"enabled": False}}), "remote.enabled", "not allowed"),
        ("state_dir not allowed", signed(6, {"device": {"state_dir": "/tmp"}}), "device.state_dir", "not allowed"),
        (
            "path traversal",
            signed(6, {"model": {"path": "../../etc/passwd", "sha256": good_sha}}),
            "model.path",
            "outside",
        ),
        (
            "absolute path elsewhere",
            signed(6, {"model": {"path": "/etc/hostname", "sha256": good_sha}}),
            "model.path",
            "outside",
        ),
        (
            "symlink out of model_dir",
            signed(6, {"model": {"path": "evil.tflite", "sha256": good_sha}}),
            "model.path",
            "symlink",
        ),
        (
            "file: URL",
            signed(6, {"model": {"path": "file:///etc/passwd", "sha256": good_sha}}),
            "model.path",
            "file: URLs",
        ),
        ("ftp: URL", signed(6, {"model": {"path": "ftp://x/m.tflite", "sha256": good_sha}}), "model.path", "ftp: URLs"),
        ("model without sha256", signed(6, {"model": {"path": f"{url}/m.tflite"}}), "model.sha256", "required"),
        (
            "fallback by URL",
            signed(6, {"model": {"fallback_path": f"{url}/m.tflite"}}),
            "model.fallback_path",
            "only model.path",
        ),
        ("wrong type", signed(6, {"postprocess": {"top_k": "three"}}), "postprocess.top_k", "integer"),
        ("out of range", signed(6, {"postprocess": {"top_k": 0}}), "postprocess.top_k", "greater than"),
        (
            "NaN in config",
            {"version": 6, "config": {"postprocess": {"threshold": float("nan")}}, "sig": "0" * 64},
            "config",
            "non-finite",
        ),
    ]


def test_hostile_documents_each_get_their_rejection_and_change_nothing(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    cfg = agent_config(tmp_path, device, mosquitto.port)
    topic = f"edge/{device}/config/set"
    with http_server(tmp_path) as url, AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        mark = col.mark()
        publish(mosquitto.port, topic, signed(5, {"postprocess": {"top_k": 2}}))
        assert answer(col, mark).payload["applied"] is True
        stored = (tmp_path / "state" / "applied.json").read_bytes()
        docs = corpus(tmp_path, url)
        assert len(docs) >= 25
        for what, payload, key, says in docs:
            mark = col.mark()
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            publish(mosquitto.port, topic, data)
            ans = answer(col, mark, timeout=15)
            assert ans.payload["applied"] is False, what
            err = ans.payload["errors"][0]
            assert err["key"] == key and says in err["message"], (what, err)
            ev = col.wait_for(
                lambda m: m.leaf == "events" and m.payload["kind"] == "config_rejected",
                10,
                "config_rejected",
                start=mark,
            )
            assert key in ev.payload["message"]
        assert (tmp_path / "state" / "applied.json").read_bytes() == stored, "a rejected update changed the store"
        mark = col.mark()
        col.wait_for(lambda m: m.leaf == "results", 10, "results", start=mark)
        time.sleep(0.3)
        assert all(len(r["top"]) == 2 for r in results_from(col, mark)), "the running config changed"
        assert agent.running()


def test_sigkill_during_an_apply_restarts_on_a_consistent_config(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """Killed while the model downloads: the restart runs the old config and cleans the partial
    file; applied, then killed: the restart runs the new one. Never a mix."""
    served = tmp_path / "www"
    served.mkdir()
    data = (BUNDLED / "digits_float.tflite").read_bytes()
    (served / "digits_float.tflite").write_bytes(data)
    cfg = agent_config(tmp_path, device, mosquitto.port)
    models = tmp_path / "models"
    new_name = f"{sha(data)}.tflite"
    with http_server(served, delay_per_chunk_s=0.1) as url:  # about 2 s for the model
        update = signed(
            1, {"model": {"path": f"{url}/digits_float.tflite", "sha256": sha(data)}, "postprocess": {"top_k": 1}}
        )
        with AgentProcess(cfg) as agent:
            assert running_model(col, 0) == "digits_uint8.tflite"
            publish(mosquitto.port, f"edge/{device}/config/set", update)
            deadline = time.monotonic() + 10
            while not list(models.glob(".*.part")):
                assert time.monotonic() < deadline, "the download did not start"
                time.sleep(0.02)
            agent.proc.send_signal(signal.SIGKILL)
            assert agent.wait(10) == -signal.SIGKILL
        assert list(models.glob(".*.part")), "the kill came after the download"
        mark = col.mark()
        with AgentProcess(cfg) as agent:  # all old
            state = col.wait_for(lambda m: m.leaf == "config/state", 20, "config/state", start=mark)
            assert state.payload["version"] == 0
            assert running_model(col, mark) == "digits_uint8.tflite"
            assert all(len(r["top"]) == 3 for r in results_from(col, mark))
            assert not list(models.glob(".*.part")), "the partial download was left behind"
            assert not (models / new_name).exists()
            mark = col.mark()
            publish(mosquitto.port, f"edge/{device}/config/set", update)  # the same update, whole this time
            assert answer(col, mark).payload["applied"] is True
            agent.proc.send_signal(signal.SIGKILL)
            assert agent.wait(10) == -signal.SIGKILL
        mark = col.mark()
        with AgentProcess(cfg) as agent:  # all new
            state = col.wait_for(lambda m: m.leaf == "config/state", 20, "config/state", start=mark)
            assert state.payload["version"] == 1
            assert running_model(col, mark) == new_name
            assert all(len(r["top"]) == 1 for r in results_from(col, mark))
            assert agent.running()
    assert not os.path.exists(tmp_path / "state" / ".applied.json.tmp")
    shutil.rmtree(served)
