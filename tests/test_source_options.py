"""`[source]`: the public flat table, and each kind's typed options behind it.

The flat table is the contract (SPEC): what users write, what `config/state` publishes and what
remote overlays merge onto. The golden file holds what those produced before each kind got its
own options model (generated once from main at e9aef6f with `snapshot()` below); the typed
options must not change a byte of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_agent.config import SourceConfig, parse_config
from edge_agent.remote.overlay import build_config
from edge_agent.remote.state import config_state

GOLDEN = Path(__file__).parent / "golden" / "source_config.json"

# One flat table per kind (several for opencv and images), each setting every key of its kind,
# with values that exercise the coercions the JSON shows (an integer fps becomes 5.0, an array
# a list).
EXAMPLES: dict[str, dict[str, Any]] = {
    "default": {},
    "synthetic": {
        "kind": "synthetic",
        "width": 32,
        "height": 24,
        "pattern": "bars",
        "seed": 7,
        "fps": 5,
        "max_frames": 10,
    },
    "images": {
        "kind": "images",
        "path": "/srv/frames/*.jpg",
        "loop": True,
        "fps": 2.5,
        "max_pixels": 1000,
        "exit_when_done": True,
    },
    "images_watch": {
        "kind": "images",
        "path": "/srv/in",
        "images_watch": True,
        "images_after": "move",
        "images_move_to": "/srv/done",
        "images_settle_s": 1,
        "stall_after_s": 60,
    },
    "opencv_device": {
        "kind": "opencv",
        "device": 0,
        "opencv_capture_size": [1280, 720],
        "opencv_capture_fps": 15,
        "opencv_fourcc": "MJPG",
        "opencv_read_timeout_s": 2,
        "reconnect_max_s": 5,
    },
    "opencv_url": {"kind": "opencv", "url": "rtsp://cam/stream", "opencv_open_timeout_s": 3},
    "opencv_file": {"kind": "opencv", "path": "/v/a.mp4", "loop": True},
    "csv": {"kind": "csv", "path": "/d/rows.csv", "delimiter": "\t", "columns": ["age", "bmi"], "loop": True},
    "wav": {
        "kind": "wav",
        "path": "/a/*.wav",
        "wav_sample_rate": 16000,
        "wav_window_s": 1,
        "wav_hop_s": 0.5,
        "wav_scale": "int16",
        "wav_pad_last": True,
    },
    "picamera2": {
        "kind": "picamera2",
        "picamera2_camera": 1,
        "picamera2_stream": "lores",
        "picamera2_size": [320, 240],
        "picamera2_stall_frames": 20,
        "fps": 30,
    },
    "mqtt": {"kind": "mqtt", "topic": "sensors/+/x", "columns": ["a"], "mqtt_queue": 5, "mqtt_qos": 1},
}

MODEL = {"path": "/m/a.tflite"}


def snapshot() -> dict[str, Any]:
    """What the flat table serializes to: per example the ordered (key, value) pairs of the
    section, the whole `config/state` payload as published, and a remote overlay's result."""
    sections = {
        name: [list(item) for item in SourceConfig.model_validate(raw).model_dump(mode="json").items()]
        for name, raw in EXAMPLES.items()
    }
    full = parse_config(
        {
            "device": {"id": "dev1", "groups": ["g"], "state_dir": "/var/lib/x"},
            "source": EXAMPLES["wav"],
            "model": MODEL,
            "mqtt": {"username": "u", "password_file": "/p", "allow_plaintext_password": True},
        }
    )
    state = json.dumps(config_state(full, 3), separators=(",", ":"))
    overlaid = build_config(parse_config({"source": EXAMPLES["images"], "model": MODEL}), {"source": {"fps": 1}})
    return {
        "sections": sections,
        "config_state": state,
        "overlay": [list(item) for item in overlaid.model_dump(mode="json")["source"].items()],
    }


def test_serialized_config_is_what_it_was_before_typed_options() -> None:
    golden = json.loads(GOLDEN.read_text())
    got = snapshot()
    for name in EXAMPLES:
        assert got["sections"][name] == golden["sections"][name], name
    assert got["config_state"] == golden["config_state"]  # byte for byte, key order included
    assert got["overlay"] == golden["overlay"]
    assert got == golden
