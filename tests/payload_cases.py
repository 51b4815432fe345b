"""Real model outputs whose result payloads are recorded in payloads.json.

Each case is a config and the frames fed to it, from the bundled models and the Coral test
models. payloads.json holds, per case, the task's result fields of each frame as the MQTT link
encodes them (`edge_agent.mqtt.link.encode`): recorded from the decoders as they were when they
still returned dicts, so test_payloads.py proves the typed results serialize to the very same
bytes. Regenerate (only when a payload is meant to change) with
`python -m tests.payload_cases > tests/payloads.json`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.sources.base import Frame

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "edge_agent" / "bundled"
CORAL = Path("/work/shared/testdata/coral")
GOLDEN = Path(__file__).with_name("payloads.json")
IMAGENET = {
    "resize": "stretch",
    "interpolation": "linear",
    "color": "rgb",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


@dataclass(frozen=True)
class Case:
    name: str
    config: dict[str, Any]
    frames: Callable[[], Iterator[Frame]]
    needs: Path  # a file the case reads (the Coral models are not everywhere)


def images(*paths: Path) -> Callable[[], Iterator[Frame]]:
    def frames() -> Iterator[Frame]:
        for i, p in enumerate(paths):
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            assert bgr is not None, p
            yield Frame(i, 0.0, 0.0, p.name, pixels=bgr, order="bgr")

    return frames


def sensor_rows(count: int) -> Callable[[], Iterator[Frame]]:
    def frames() -> Iterator[Frame]:
        with (BUNDLED / "sensor_heldout.csv").open(newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if i == count:
                    return
                values = [float(row[n]) if i % 3 else np.nan for n in ("age", "bmi", "bp", "s5")]
                values[1] = float(row["bmi"])  # one imputed feature on every third row, never all
                yield Frame(i, 0.0, 0.0, f"row{i}", values=np.asarray(values, dtype=np.float64))

    return frames


def _sensor_features() -> list[dict[str, Any]]:
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    return [
        {"name": f["name"], "mean": f["mean"], "std": f["std"], "impute": "mean"}
        for f in manifest["models"]["sensor"]["transform"]["features"]
    ]


def cases() -> list[Case]:
    digits = sorted((BUNDLED / "digits_frames").glob("*.png"))[:4]
    canvases = sorted((BUNDLED / "detection_canvases").glob("*.png"))[:3]
    seg = sorted((BUNDLED / "seg_canvases").glob("[0-9][0-9][0-9][0-9].png"))[:3]
    detect = {"resize": "letterbox", "color": "rgb", "scale": 1 / 255, "pad_value": 0}
    movenet = CORAL / "movenet_single_pose_lightning_ptq.tflite"
    mobilenet = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
    return [
        Case(
            "classification_digits",
            {
                "model": {
                    "path": str(BUNDLED / "digits_uint8.tflite"),
                    "labels": str(BUNDLED / "digits_labels.txt"),
                    "task": "classification",
                },
                "preprocess": IMAGENET,
                "postprocess": {"top_k": 3},
            },
            images(*digits),
            BUNDLED / "digits_uint8.tflite",
        ),
        Case(
            "classification_digits_include",  # the sorted path (an include filter)
            {
                "model": {
                    "path": str(BUNDLED / "digits_float.tflite"),
                    "labels": str(BUNDLED / "digits_labels.txt"),
                    "task": "classification",
                },
                "preprocess": IMAGENET,
                "postprocess": {
                    "top_k": 2,
                    "activation": "softmax",
                    "include_labels": ["three", "five", "eight", "two"],
                },
            },
            images(*digits),
            BUNDLED / "digits_float.tflite",
        ),
        Case(
            "classification_mobilenet_v2",
            {
                "model": {"path": str(mobilenet), "task": "classification"},  # its embedded labels
                "preprocess": {"resize": "center_crop", "color": "rgb", "mean": [127.5], "std": [127.5]},
                "postprocess": {"top_k": 5},
            },
            images(CORAL / "grace_hopper.bmp", CORAL / "cat.bmp"),
            mobilenet,
        ),
        *(
            Case(
                f"detection_{kind}",
                {
                    "model": {
                        "path": str(BUNDLED / f"detect_{kind}.tflite"),
                        "labels": str(BUNDLED / "digits_labels.txt"),
                        "task": "detection",
                    },
                    "preprocess": detect,
                    "postprocess": {"threshold": 0.05},
                },
                images(*canvases),
                BUNDLED / f"detect_{kind}.tflite",
            )
            for kind in ("ssd", "yolo")
        ),
        *(
            Case(
                f"pose_movenet_{resize}",
                {
                    "model": {"path": str(movenet), "task": "pose"},
                    "preprocess": {"resize": resize, "interpolation": "linear", "color": "rgb"},
                },
                images(CORAL / "squat.bmp"),
                movenet,
            )
            for resize in ("stretch", "letterbox", "center_crop")
        ),
        Case(
            "segmentation",
            {
                "model": {
                    "path": str(BUNDLED / "segmentation.tflite"),
                    "labels": str(BUNDLED / "segmentation_labels.txt"),
                    "task": "segmentation",
                },
                "preprocess": {"resize": "letterbox", "interpolation": "linear", "color": "rgb", "scale": 1 / 255},
            },
            images(*seg),
            BUNDLED / "segmentation.tflite",
        ),
        Case(
            "regression_sensor",
            {
                "source": {"kind": "csv", "path": str(BUNDLED / "sensor_heldout.csv")},
                "model": {"path": str(BUNDLED / "sensor.tflite"), "task": "regression"},
                "preprocess": {"features": _sensor_features()},
                "postprocess": {"value_names": ["progression"], "units": {"progression": "score"}},
            },
            sensor_rows(4),
            BUNDLED / "sensor.tflite",
        ),
        Case(
            "raw_sensor",
            {
                "source": {"kind": "csv", "path": str(BUNDLED / "sensor_heldout.csv")},
                "model": {"path": str(BUNDLED / "sensor.tflite"), "task": "raw"},
                "preprocess": {"features": _sensor_features()},
            },
            sensor_rows(2),
            BUNDLED / "sensor.tflite",
        ),
    ]


def _record() -> None:  # pragma: no cover - run by hand, see the module's docstring
    from edge_agent.config import parse_config  # noqa: PLC0415
    from edge_agent.mqtt.link import encode  # noqa: PLC0415
    from edge_agent.pipeline import Inference, Pipeline  # noqa: PLC0415

    out: dict[str, list[str]] = {}
    for case in cases():
        p = Pipeline.load(parse_config(case.config))
        try:
            got = []
            for frame in case.frames():
                outcome = p.process(frame)
                assert isinstance(outcome, Inference), outcome
                got.append(encode(outcome.result.to_payload()).decode())
            out[case.name] = got
        finally:
            p.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    _record()
