"""Commands on P/D/cmd/<name>, answered on cmd/result, against the real agent and mosquitto:
snapshot (the next frame as a JPEG within service.snapshot_max_kb), reload, selftest."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import AgentProcess, Collector, write_config
from remote_helpers import publish

from edge_agent.broker import LocalBroker
from edge_agent.snapshot import encode_within


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
