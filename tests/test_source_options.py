"""`[source]`: the public flat table, and each kind's typed options behind it.

The flat table is the contract (SPEC): what users write, what `config/state` publishes and what
remote overlays merge onto. The golden file holds what those produced before each kind got its
own options model (generated once from main at e9aef6f with `snapshot()` below); the typed
options must not change a byte of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.config import SourceConfig, parse_config
from edge_agent.config.source import (
    KINDS_OF_KEY,
    OPTIONS_OF_KIND,
    CsvOptions,
    ImagesOptions,
    KindOptions,
    MqttOptions,
    OpenCvOptions,
    Picamera2Options,
    SyntheticOptions,
    WavOptions,
)
from edge_agent.errors import ConfigError
from edge_agent.remote.document import UpdateRejectedError
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


# ---- each kind's options, from the flat table ------------------------------------------------
# What `.options` holds for each example: the kind's own keys under their own names, nothing else.
EXPECTED_OPTIONS: dict[str, KindOptions] = {
    "default": SyntheticOptions(width=640, height=480, pattern="noise", seed=0),
    "synthetic": SyntheticOptions(width=32, height=24, pattern="bars", seed=7),
    "images": ImagesOptions(path="/srv/frames/*.jpg", loop=True, watch=False, after="keep", move_to=None, settle_s=2.0),
    "images_watch": ImagesOptions(
        path="/srv/in", loop=False, watch=True, after="move", move_to="/srv/done", settle_s=1.0
    ),
    "opencv_device": OpenCvOptions(
        path=None,
        url=None,
        device=0,
        loop=False,
        open_timeout_s=10.0,
        read_timeout_s=2.0,
        capture_size=(1280, 720),
        capture_fps=15.0,
        fourcc="MJPG",
    ),
    "opencv_url": OpenCvOptions(
        path=None,
        url="rtsp://cam/stream",
        device=None,
        loop=False,
        open_timeout_s=3.0,
        read_timeout_s=5.0,
        capture_size=None,
        capture_fps=None,
        fourcc=None,
    ),
    "opencv_file": OpenCvOptions(
        path="/v/a.mp4",
        url=None,
        device=None,
        loop=True,
        open_timeout_s=10.0,
        read_timeout_s=5.0,
        capture_size=None,
        capture_fps=None,
        fourcc=None,
    ),
    "csv": CsvOptions(path="/d/rows.csv", loop=True, delimiter="\t", columns=("age", "bmi")),
    "wav": WavOptions(
        path="/a/*.wav", loop=False, sample_rate=16000, window_s=1.0, hop_s=0.5, scale="int16", pad_last=True
    ),
    "picamera2": Picamera2Options(camera=1, stream="lores", size=(320, 240), stall_frames=20),
    "mqtt": MqttOptions(topic="sensors/+/x", columns=("a",), queue=5, qos=1),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_kinds_options_parse_from_the_flat_table(name: str) -> None:
    cfg = SourceConfig.model_validate(EXAMPLES[name])
    assert cfg.options == EXPECTED_OPTIONS[name]
    assert type(cfg.options) is OPTIONS_OF_KIND[cfg.kind]
    assert cfg.options.kind == cfg.kind
    # a config read back from its own dump (what a remote overlay does) has the same options
    assert SourceConfig.model_validate(cfg.model_dump(mode="json")).options == cfg.options


def test_the_common_keys_stay_on_the_section_and_out_of_the_options() -> None:
    cfg = SourceConfig.model_validate(EXAMPLES["images"])
    assert (cfg.fps, cfg.max_pixels, cfg.exit_when_done, cfg.reconnect_max_s) == (2.5, 1000, True, 30.0)
    common = {"kind", "fps", "exit_when_done", "max_frames", "stall_after_s", "reconnect_max_s", "max_pixels"}
    assert set(SourceConfig.model_fields) == common | set(KINDS_OF_KEY)  # every other key is some kind's
    for options in OPTIONS_OF_KIND.values():
        assert not common & set(options.public_keys()) - {"kind"}
        assert set(options.public_keys()) <= set(SourceConfig.model_fields)


def test_options_are_frozen_and_take_no_other_key() -> None:
    opts = SourceConfig.model_validate(EXAMPLES["wav"]).options
    with pytest.raises(ValidationError, match="frozen"):
        opts.loop = True  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        WavOptions.model_validate({**EXAMPLES["wav"], "wav_window_s": None, "wav_hop_s": None, "loop": False, "x": 1})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):  # the section's keys are not its
        SyntheticOptions.model_validate({"width": 1, "height": 1, "pattern": "noise", "seed": 0, "fps": 5})


def test_a_copy_with_changes_is_validated_and_its_options_follow() -> None:
    cfg = SourceConfig.model_validate(EXAMPLES["csv"])
    copy = cfg.model_copy(update={"path": "/other.csv", "loop": False})
    assert copy.options == CsvOptions(path="/other.csv", loop=False, delimiter="\t", columns=("age", "bmi"))
    assert cfg.options.path == "/d/rows.csv"  # the original is untouched
    with pytest.raises(ValidationError, match="wav_scale"):
        cfg.model_copy(update={"wav_scale": "int16"})  # a wav key on a csv source


# ---- a key of another kind ------------------------------------------------------------------
# Per kind, the least table that is valid; per kind-owned key, a valid value other than its default.
MINIMAL_TABLE: dict[str, dict[str, Any]] = {
    "picamera2": {"kind": "picamera2"},
    "opencv": {"kind": "opencv", "url": "rtsp://cam/stream"},
    "images": {"kind": "images", "path": "/srv/frames"},
    "synthetic": {"kind": "synthetic"},
    "csv": {"kind": "csv", "path": "/d/rows.csv"},
    "wav": {"kind": "wav", "path": "/a", "wav_sample_rate": 16000},
    "mqtt": {"kind": "mqtt", "topic": "sensors/x"},
}
OTHER_VALUE: dict[str, Any] = {
    "path": "/x",
    "url": "rtsp://x",
    "device": 1,
    "loop": True,
    "topic": "t",
    "width": 32,
    "height": 24,
    "pattern": "bars",
    "seed": 1,
    "delimiter": ";",
    "columns": ["a"],
    "opencv_open_timeout_s": 1.0,
    "opencv_read_timeout_s": 1.0,
    "opencv_capture_size": [640, 480],
    "opencv_capture_fps": 10.0,
    "opencv_fourcc": "YUYV",
    "wav_sample_rate": 8000,
    "wav_window_s": 1.0,
    "wav_hop_s": 1.0,
    "wav_scale": "int16",
    "wav_pad_last": True,
    "picamera2_camera": 1,
    "picamera2_stream": "lores",
    "picamera2_size": [320, 240],
    "picamera2_stall_frames": 5,
    "images_watch": True,
    "images_after": "delete",
    "images_move_to": "/x",
    "images_settle_s": 1.0,
    "mqtt_queue": 5,
    "mqtt_qos": 1,
}
FOREIGN = [(kind, key) for key, owners in KINDS_OF_KEY.items() for kind in MINIMAL_TABLE if kind not in owners]


def test_every_kind_owned_key_has_a_value_to_try() -> None:
    assert set(OTHER_VALUE) == set(KINDS_OF_KEY)
    for kind, table in MINIMAL_TABLE.items():
        assert SourceConfig.model_validate(table).kind == kind
    for key, owners in KINDS_OF_KEY.items():  # each value is one its own kind takes
        SourceConfig.model_validate({**MINIMAL_TABLE[owners[0]], key: OTHER_VALUE[key], **_companions(key)})


def _companions(key: str) -> dict[str, Any]:
    """What a key needs beside it to be valid in its own kind."""
    return {
        "device": {"url": None},
        "opencv_capture_size": {"url": None, "device": 0},
        "opencv_capture_fps": {"url": None, "device": 0},
        "opencv_fourcc": {"url": None, "device": 0},
        "path": {"url": None},
        "images_after": {"images_watch": True},
        "images_move_to": {"images_watch": True, "images_after": "move"},
    }.get(key, {})


@pytest.mark.parametrize(("kind", "key"), FOREIGN, ids=[f"{k}-{key}" for k, key in FOREIGN])
def test_a_key_of_another_kind_is_one_line_naming_the_key_and_the_kind(kind: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"model": MODEL, "source": {**MINIMAL_TABLE[kind], key: OTHER_VALUE[key]}})
    owners = KINDS_OF_KEY[key]
    assert exc.value.problems == [
        f"source.{key}: not a key of source.kind = {kind!r} "
        f"(only for {'kind' if len(owners) == 1 else 'kinds'} {', '.join(map(repr, owners))})"
    ]


def test_keys_of_another_kind_at_their_defaults_are_accepted() -> None:
    """A config dumped whole carries every key; those of the other kinds hold their defaults."""
    table = {**MINIMAL_TABLE["mqtt"], "width": 640, "wav_scale": "float", "loop": False, "path": None}
    assert SourceConfig.model_validate(table).options == MqttOptions(topic="sensors/x", columns=None, queue=100, qos=0)


def test_every_key_of_another_kind_is_named_one_line_each() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"model": MODEL, "source": {**MINIMAL_TABLE["images"], "width": 32, "wav_scale": "int16"}})
    assert exc.value.problems == [
        "source.width: not a key of source.kind = 'images' (only for kind 'synthetic')",
        "source.wav_scale: not a key of source.kind = 'images' (only for kind 'wav')",
    ]


@pytest.mark.e2e  # starts the CLI
def test_config_validate_exits_2_with_the_key_and_the_kind(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text('[source]\nkind = "csv"\npath = "rows.csv"\nmqtt_qos = 1\n[model]\npath = "m.tflite"\n')
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "config", "validate", str(p)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["source.mqtt_qos: not a key of source.kind = 'csv' (only for kind 'mqtt')"]


def test_a_remote_update_that_changes_the_kind_resets_the_old_kinds_keys() -> None:
    """The overlay is merged onto the whole running table: the old kind's keys stay unless the
    update gives them back their defaults, and the error names the first one left."""
    file_cfg = parse_config({"source": EXAMPLES["images"], "model": MODEL})
    with pytest.raises(UpdateRejectedError) as exc:
        build_config(file_cfg, {"source": {"kind": "synthetic"}})
    assert "source.path" in str(exc.value) and "'synthetic'" in str(exc.value)
    switched = build_config(file_cfg, {"source": {"kind": "synthetic", "path": None, "loop": False, "width": 64}})
    assert switched.source.options == SyntheticOptions(width=64, height=480, pattern="noise", seed=0)
