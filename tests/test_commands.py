"""Commands on P/D/cmd/<name>, answered on cmd/result, against the real agent and mosquitto:
snapshot (the next frame as a JPEG within service.snapshot_max_kb), reload, selftest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import AgentProcess, Collector, write_config
from paho.mqtt.enums import CallbackAPIVersion
from remote_helpers import KEY, publish, signed

from edge_agent.broker import LocalBroker
from edge_agent.commands import BadCommandIdError, Inbox, Request, busy_answer, command_id
from edge_agent.snapshot import encode_within
from schemas import validate


def test_snapshot_fits_the_limit_reload_and_selftest_answer(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            # noise is the worst case for JPEG: 640x480 of it is far above 16 KB at any quality
            "source": {"kind": "synthetic", "width": 640, "height": 480, "pattern": "noise", "fps": 10},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
            "service": {"snapshot_max_kb": 16},
        },
    )
    base = f"edge/{device}"
    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        for name in ("snapshot", "selftest", "reload"):
            mark = col.mark()
            publish(mosquitto.port, f"{base}/cmd/{name}", b"")
            ans = col.wait_for(
                lambda m, n=name: m.leaf == "cmd/result" and m.payload["command"] == n, 15, f"{name} answer", start=mark
            )
            assert ans.payload["ok"] is True, ans.payload
            if name == "snapshot":
                shot = col.wait_for(lambda m: m.leaf == "snapshot", 5, "the JPEG", start=mark)
                jpeg = shot.payload
                assert isinstance(jpeg, bytes) and len(jpeg) == ans.payload["bytes"] <= 16 * 1024
                img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                assert img is not None and (img.shape[1], img.shape[0]) == (ans.payload["width"], ans.payload["height"])
                assert ans.payload["width"] < 640, "noise at full size cannot fit 16 KB: it was made smaller"
        time.sleep(0.5)
        assert col.on("results")[-1]["model"]["name"] == "digits_uint8.tflite"
        assert agent.running()


def test_encode_within_keeps_the_full_size_when_it_fits_and_gives_up_when_nothing_does() -> None:
    gray = np.full((480, 640, 3), 128, np.uint8)  # flat: tiny at any quality
    shot = encode_within(gray, 64 * 1024)
    assert shot is not None and (shot.width, shot.height, shot.quality) == (640, 480, 85)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert encode_within(noise, 300) is None  # not even a thumbnail fits 300 bytes


def test_a_flood_of_commands_gets_one_answer_each_and_an_update_sent_meanwhile_is_answered(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """200 commands published at once, more than the inbox holds: each is answered exactly once
    (done, or busy), matched by its id; a signed update sent in the middle is answered too."""
    key_file = tmp_path / "update.key"
    key_file.write_bytes(KEY)
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 20},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
            "remote": {"enabled": True, "hmac_key_file": str(key_file), "model_dir": str(tmp_path)},
        },
    )
    base = f"edge/{device}"
    names = ("selftest", "snapshot", "pause", "resume", "nosuch")
    sent = {f"c{i}": names[i % len(names)] for i in range(200)}
    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        mark = col.mark()
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            infos = []
            for i, (cid, name) in enumerate(sent.items()):
                infos.append(client.publish(f"{base}/cmd/{name}", json.dumps({"id": cid}), qos=1))
                if i == 100:
                    update = signed(1, {"postprocess": {"top_k": 2}})
                    infos.append(client.publish(f"{base}/config/set", json.dumps(update), qos=1))
            for info in infos:
                info.wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()

        def answered() -> dict[str, list[dict[str, Any]]]:
            by_id: dict[str, list[dict[str, Any]]] = {}
            for m in col.snapshot()[mark:]:
                if m.leaf == "cmd/result":
                    by_id.setdefault(m.payload.get("id"), []).append(m.payload)
            return by_id

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(answered()) < len(sent):
            time.sleep(0.2)
        time.sleep(1.0)  # a second answer to any of them would arrive by now
        by_id = answered()
        assert set(by_id) == set(sent), f"unanswered: {sorted(set(sent) - set(by_id))[:10]}"
        for cid, answers in by_id.items():
            assert len(answers) == 1, (cid, answers)
            assert answers[0]["command"] == sent[cid]
        busy = [a[0] for a in by_id.values() if a[0].get("busy")]
        done = [a[0] for a in by_id.values() if not a[0].get("busy")]
        assert all(a["ok"] is False and a["message"].startswith("busy:") for a in busy)
        print(f"{len(busy)} busy, {len(done)} done")
        assert done, "the inbox took some of them"
        assert any(a["command"] == "nosuch" and "unknown command" in a["message"] for a in done)
        update_answers = [m.payload for m in col.snapshot()[mark:] if m.leaf == "config/result"]
        assert len(update_answers) == 1 and update_answers[0]["version"] == 1, update_answers
        validate("cmd_result", busy[0] if busy else done[0])
        validate("config_result", update_answers[0])
        assert agent.running()


def test_a_full_inbox_answers_each_request_it_cannot_take_once() -> None:
    answered: list[Request] = []
    inbox = Inbox(maxsize=2, answer_busy=answered.append)
    inbox.on_cmd("edge/d/cmd/pause", {"id": "a"})
    inbox.on_cmd("edge/d/cmd/resume", {"id": 2})
    inbox.on_cmd("edge/d/cmd/selftest", {"id": "c"})
    inbox.on_config("edge/d/config/set", {"version": 7, "config": {}, "sig": "x"})
    inbox.reject("edge/d/cmd/snapshot", "message is not valid JSON")
    assert [r.name or r.topic for r in answered] == ["selftest", "edge/d/config/set", "edge/d/cmd/snapshot"]
    assert inbox.busy == 3 and len(inbox.drain()) == 2
    leaf, cmd = busy_answer(answered[0], 2)
    assert leaf == "cmd/result" and cmd["id"] == "c" and cmd["busy"] is True and cmd["message"].startswith("busy:")
    validate("cmd_result", cmd)
    leaf, upd = busy_answer(answered[1], 2)
    assert leaf == "config/result" and upd["version"] == 7 and upd["applied"] is False
    validate("config_result", upd)
    leaf, rej = busy_answer(answered[2], 2)
    assert leaf == "cmd/result" and rej["message"] == "rejected: message is not valid JSON" and "busy" not in rej


def test_command_ids_are_echoed_within_limits() -> None:
    assert command_id(None) is None and command_id({"annotate": True}) is None
    assert command_id({"id": "x-1"}) == "x-1" and command_id({"id": 12}) == 12
    for bad in ("", "x" * 129, 10**30, True, 1.5, ["a"]):
        with pytest.raises(BadCommandIdError, match="id must be"):
            command_id({"id": bad})


def test_reload_keeps_the_running_model_when_the_new_file_is_missing_or_corrupt_and_pause_shows_in_status(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """cmd/reload takes SIGHUP's path: the model is built and self-tested before the swap, so a
    model file gone or broken on disk leaves the running one working (was: `reload failed`,
    degraded, no results). A paused agent says so in its status and stats."""
    model = tmp_path / "digits.tflite"
    good = (BUNDLED / "digits_uint8.tflite").read_bytes()
    model.write_bytes(good)
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 20},
            "model": {"path": str(model), "interpreter": INTERPRETER},
            "service": {"stats_interval_s": 1},
        },
    )
    base = f"edge/{device}"

    def command(name: str, cid: str) -> dict[str, Any]:
        mark = col.mark()
        publish(mosquitto.port, f"{base}/cmd/{name}", {"id": cid})
        ans = col.wait_for(lambda m: m.leaf == "cmd/result" and m.payload.get("id") == cid, 20, cid, start=mark)
        return dict(ans.payload)

    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        running = col.mark()
        for i, breakage in enumerate((b"", good[: len(good) // 2], b"TFL3" + bytes(200))):
            model.write_bytes(breakage)
            ans = command("reload", f"broken-{i}")
            assert ans["ok"] is False and "keeping the running model" in ans["message"], ans
            mark = col.mark()
            col.wait_for(lambda m: m.leaf == "results", 10, "results go on with the running model", start=mark)
        model.unlink()
        ans = command("reload", "missing")
        assert ans["ok"] is False and "keeping the running model" in ans["message"], ans
        statuses = [m.payload for m in col.snapshot()[running:] if m.leaf == "status"]
        assert all(s["state"] == "online" for s in statuses), "a failed reload degraded the agent"
        model.write_bytes(good)
        ans = command("reload", "good")
        assert ans["ok"] is True and "digits.tflite reloaded" in ans["message"], ans
        mark = col.mark()
        col.wait_for(lambda m: m.leaf == "results", 10, "results after the reload", start=mark)

        assert command("pause", "p")["ok"] is True
        st = col.wait_for(lambda m: m.leaf == "status" and m.payload.get("paused") is True, 10, "status paused")
        assert st.payload["state"] == "online"
        validate("status", st.payload)
        stats = col.wait_for(lambda m: m.leaf == "stats" and m.payload.get("paused") is True, 10, "stats paused")
        validate("stats", stats.payload)
        assert command("resume", "r")["ok"] is True
        col.wait_for(lambda m: m.leaf == "status" and m.payload.get("paused") is False, 10, "status resumed")
        assert agent.running()


def test_a_snapshot_asked_for_before_a_pause_is_answered_all_the_same(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """A snapshot waits for the next frame; a pause right behind it means no frame comes: the
    snapshot is answered then (ok false), not left waiting for a resume that may never come."""
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 2},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
        },
    )
    base = f"edge/{device}"
    with AgentProcess(cfg):
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        mark = col.mark()
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            for name, cid in (("snapshot", "s1"), ("snapshot", "s2"), ("pause", "p")):
                client.publish(f"{base}/cmd/{name}", json.dumps({"id": cid}), qos=1).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        for cid in ("s1", "s2", "p"):
            col.wait_for(lambda m, c=cid: m.leaf == "cmd/result" and m.payload.get("id") == c, 15, cid, start=mark)
        answers = [m.payload for m in col.snapshot()[mark:] if m.leaf == "cmd/result"]
        assert sorted(a["id"] for a in answers) == ["p", "s1", "s2"], answers
