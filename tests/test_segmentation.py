"""Segmentation: class fractions of the frame (letterbox padding left out), and the mask as a
PNG on P/D/mask only when the `mask` command asks for it.

Constructed tensors cover the layouts and edge cases; the bundled segmentation model
(scripts/make_models.py: digits on canvases, background + ten digits) runs on its held-out
96×64 canvases, letterboxed into 64×64, through the pipeline and through the agent.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import LocalBroker
from edge_agent.config import PostprocessConfig, parse_config
from edge_agent.errors import ModelError
from edge_agent.pipeline import Inference, Pipeline
from edge_agent.postprocess.segmentation import Segmenter
from edge_agent.preprocess import Geometry
from edge_agent.sources.base import Frame
from schemas import validate

FULL = Geometry(1.0, 1.0, 0.0, 0.0)
LABELS = {0: "background", 1: "cat", 2: "dog"}


def seg(shape: tuple[int, ...], labels: dict[int, str] | None = None, **cfg: Any) -> Segmenter:
    return Segmenter(PostprocessConfig(**cfg), LABELS if labels is None else labels, shape, (8, 8))


def scores_for(ids: np.ndarray, classes: int = 3) -> np.ndarray:
    """One-hot-ish float scores [1, H, W, C] whose argmax is `ids`."""
    out = np.zeros((1, *ids.shape, classes), dtype=np.float32)
    np.put_along_axis(out[0], ids[..., None], 5.0, axis=-1)
    return out


def fractions(result: dict[str, Any]) -> dict[str, float]:
    return {c["label"]: c["fraction"] for c in result["classes"]}


# ---- constructed outputs ------------------------------------------------------------------------
def test_fractions_sorted_with_labels_and_indices() -> None:
    ids = np.zeros((8, 8), dtype=np.intp)
    ids[:4, :4] = 2  # 16 px
    ids[4:, :2] = 1  # 8 px
    r = seg((1, 8, 8, 3)).decode(scores_for(ids), FULL, (8, 8)).to_payload()
    assert r["classes"] == [
        {"index": 0, "label": "background", "fraction": 0.625},
        {"index": 2, "label": "dog", "fraction": 0.25},
        {"index": 1, "label": "cat", "fraction": 0.125},
    ]


def test_a_mask_of_one_class_is_all_of_it() -> None:
    ids = np.full((8, 8), 1, dtype=np.intp)
    r = seg((1, 8, 8, 3)).decode(scores_for(ids), FULL, (8, 8)).to_payload()
    assert r["classes"] == [{"index": 1, "label": "cat", "fraction": 1.0}]


def test_letterbox_padding_is_left_out() -> None:
    """A 16×8 frame letterboxed into 8×8: rows 2..5 show it; the padding (rows 0, 1, 6, 7) is
    what a model calls background, and must not count."""
    g = Geometry(0.5, 0.5, 0.0, 2.0)
    ids = np.zeros((8, 8), dtype=np.intp)
    ids[2:6, :] = 2
    ids[2:6, :2] = 1
    r = seg((1, 8, 8, 3)).decode(scores_for(ids), g, (16, 8)).to_payload()
    assert fractions(r) == {"dog": 0.75, "cat": 0.25}


def test_lower_resolution_output_is_scaled_to_the_input() -> None:
    """A 4×4 output for an 8×8 input: the frame's rows 2..5 of the input are rows 1..2 of it."""
    g = Geometry(0.5, 0.5, 0.0, 2.0)
    ids = np.zeros((4, 4), dtype=np.intp)
    ids[1:3, :] = 1
    ids[1:3, 3] = 2
    s = Segmenter(PostprocessConfig(), LABELS, (1, 4, 4, 3), (8, 8))
    assert fractions(s.decode(scores_for(ids), g, (16, 8)).to_payload()) == {"cat": 0.75, "dog": 0.25}


def test_quantized_scores_dequantized_keep_the_argmax() -> None:
    """uint8 scores as fetch_outputs gives them (dequantized with scale/zero point)."""
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    deq = ((q.astype(np.float32) - 128) * np.float32(0.05)).astype(np.float32)
    r = seg((1, 8, 8, 3)).decode(deq, FULL, (8, 8)).to_payload()
    ids = np.argmax(q[0], axis=-1)
    want = {LABELS[c]: np.count_nonzero(ids == c) / 64 for c in range(3) if np.any(ids == c)}
    assert fractions(r) == pytest.approx(want)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 8, 8, 1)])
def test_class_id_outputs(shape: tuple[int, ...]) -> None:
    ids = np.zeros((8, 8), dtype=np.float32)
    ids[:, 6:] = 2.0
    ids[0, 0] = -1.0  # a broken id counts as class 0
    r = seg(shape).decode(ids.reshape(shape), FULL, (8, 8)).to_payload()
    assert fractions(r) == {"background": 0.75, "dog": 0.25}


def test_unknown_class_ids_are_named_by_index() -> None:
    ids = np.full((1, 8, 8), 7.0, dtype=np.float32)
    assert seg((1, 8, 8)).decode(ids, FULL, (8, 8)).to_payload()["classes"] == [
        {"index": 7, "label": "7", "fraction": 1.0}
    ]


def test_argmax_goes_into_the_same_buffer_every_frame() -> None:
    s = seg((1, 8, 8, 3))
    buf = s.ids
    for k in range(3):
        s.decode(scores_for(np.full((8, 8), k, dtype=np.intp)), FULL, (8, 8))
        assert s.ids is buf and np.all(buf == k)


def test_mask_png_is_the_frame_region_at_output_size() -> None:
    g = Geometry(0.5, 0.5, 0.0, 2.0)
    ids = np.zeros((8, 8), dtype=np.intp)
    ids[2:6, 3] = 2
    s = seg((1, 8, 8, 3))
    with pytest.raises(ValueError, match="no mask decoded yet"):
        s.mask_png()
    s.decode(scores_for(ids), g, (16, 8))
    png, w, h = s.mask_png()
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (w, h) == (8, 4) and back.shape == (4, 8) and back.dtype == np.uint8
    assert np.array_equal(back, ids[2:6].astype(np.uint8))


def test_mask_png_over_the_limit_is_refused() -> None:
    s = Segmenter(PostprocessConfig(mask_max_bytes=1024), {}, (1, 256, 256, 3), (256, 256))
    noise = np.random.default_rng(0).normal(size=(1, 256, 256, 3)).astype(np.float32)
    s.decode(noise, FULL, (256, 256))
    with pytest.raises(ValueError, match=r"over postprocess\.mask_max_bytes = 1024"):
        s.mask_png()


@pytest.mark.parametrize("shape", [(1, 10), (1, 8, 8, 3, 2), (2, 8, 8, 3)])
def test_other_layouts_are_refused_in_one_line(shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match="is not a mask") as err:
        seg(shape)
    assert "\n" not in str(err.value)


def test_more_labels_than_classes_is_refused() -> None:
    with pytest.raises(ModelError, match="labels up to index 2, but the model scores 2 classes"):
        seg((1, 8, 8, 2))


# ---- the bundled model --------------------------------------------------------------------------
def canvases(bundled: Path) -> list[Path]:
    return sorted((bundled / "seg_canvases").glob("[0-9][0-9][0-9][0-9].png"))


def truth_fractions(path: Path, labels: list[str]) -> dict[str, float]:
    mask = cv2.imread(str(path.with_name(path.stem + "_mask.png")), cv2.IMREAD_UNCHANGED)
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    return {labels[c]: counts[c] / mask.size for c in np.flatnonzero(counts)}


def seg_config(bundled: Path) -> dict[str, Any]:
    return {
        "model": {
            "path": str(bundled / "segmentation.tflite"),
            "labels": str(bundled / "segmentation_labels.txt"),
            "task": "segmentation",
            "interpreter": INTERPRETER,
        },
        "preprocess": {"resize": "letterbox", "interpolation": "linear", "color": "rgb", "scale": 1 / 255},
    }


def test_bundled_model_fractions_close_to_the_truth(bundled: Path) -> None:
    """Held-out 96×64 canvases letterboxed to 64×64: the fractions track the truth (the
    manifest's measured.max_fraction_error is the same figure, from scripts/verify_models.py)."""
    labels = [ln for ln in (bundled / "segmentation_labels.txt").read_text().splitlines() if ln]
    p = Pipeline.load(parse_config(seg_config(bundled)))
    worst = 0.0
    for path in canvases(bundled):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        outcome = p.process(Frame(1, 0.0, 0.0, path.name, pixels=bgr, order="bgr"))
        assert isinstance(outcome, Inference), outcome
        got, want = fractions(outcome.result.to_payload()), truth_fractions(path, labels)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        for label in set(got) | set(want):
            worst = max(worst, abs(got.get(label, 0.0) - want.get(label, 0.0)))
    assert worst <= 0.07, worst  # measured 0.057 (manifest: max_fraction_error)
    p.close()


def test_fractions_are_counted_on_the_frame_rows_only(bundled: Path) -> None:
    """96×64 canvases letterboxed into 64×64 fill input rows 10..53 (43 rows), i.e. rows 5..26
    of the 32×32 output; the other 11 rows are padding and are not counted."""
    labels = [ln for ln in (bundled / "segmentation_labels.txt").read_text().splitlines() if ln]
    p = Pipeline.load(parse_config(seg_config(bundled)))
    bgr = cv2.imread(str(canvases(bundled)[0]), cv2.IMREAD_COLOR)
    outcome = p.process(Frame(1, 0.0, 0.0, "c", pixels=bgr, order="bgr"))
    assert isinstance(outcome, Inference)
    s = p.segmenter
    assert s is not None and s.region == (0, 5, 32, 26)
    counts = np.bincount(s.ids[5:26].ravel(), minlength=len(labels))
    assert fractions(outcome.result.to_payload()) == {
        labels[c]: round(counts[c] / (21 * 32), 6) for c in np.flatnonzero(counts)
    }
    whole = np.bincount(s.ids.ravel(), minlength=len(labels)) / s.ids.size
    assert whole[0] > counts[0] / (21 * 32)  # the padding is background to the model
    p.close()


def publish(port: int, topic: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"", qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_end_to_end_fractions_and_the_mask_only_when_asked(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """The agent on the held-out canvases (looping): results carry fractions close to the
    truth; no mask is published until `cmd/mask`; then exactly one PNG of the announced size
    (32×21: the letterboxed canvas's rows at the model's output resolution) whose classes agree with
    the result of the same frame."""
    labels = [ln for ln in (bundled / "segmentation_labels.txt").read_text().splitlines() if ln]
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "seg_canvases" / "00[0-9][0-9].png"),
                "loop": True,
                "fps": 20,
            },
            **seg_config(bundled),
        },
    )
    base = f"edge/{device}"
    with AgentProcess(cfg) as agent:
        first = col.wait_for(lambda m: m.leaf == "results", 60, "a segmentation result")
        results_before = col.mark()
        col.wait_for(lambda m: m.leaf == "results", 30, "more results", start=results_before)
        assert col.on("mask") == [], "a mask was published unasked"
        publish(mosquitto.port, f"{base}/cmd/mask")
        answer = col.wait_for(
            lambda m: m.leaf == "cmd/result" and m.payload.get("command") == "mask", 30, "the answer to cmd/mask"
        ).payload
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait(30)
        assert "Traceback" not in agent.output, agent.output
    assert answer["ok"] is True, answer
    validate("cmd_result", answer)
    masks = col.on("mask")
    assert len(masks) == 1
    png = masks[0]
    assert isinstance(png, bytes) and len(png) == answer["bytes"]
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (answer["height"], answer["width"]) == (21, 32)
    results = [m.payload for m in col.snapshot() if m.leaf == "results"]
    validate("result", first.payload)
    for r in results:
        validate("result", r)
        want = truth_fractions(bundled / "seg_canvases" / r["frame"]["source"], labels)
        for c in r["classes"]:
            assert abs(c["fraction"] - want.get(c["label"], 0.0)) <= 0.07, (r["frame"], c, want)
    same = [r for r in results if r["frame"]["seq"] == answer["frame_seq"]]
    assert len(same) == 1
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    from_mask = {labels[c]: round(counts[c] / mask.size, 6) for c in np.flatnonzero(counts)}
    assert from_mask == fractions(same[0])
    assert json.dumps(same[0])  # plain JSON


def test_mask_command_on_a_non_segmentation_model_is_refused(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "images",
                "path": str(bundled / "digits_frames" / "000[0-4]_*.png"),
                "loop": True,
                "fps": 20,
            },
            "model": {
                "path": str(bundled / "digits_float.tflite"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        },
    )
    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 60, "a result")
        publish(mosquitto.port, f"edge/{device}/cmd/mask")
        answer = col.wait_for(
            lambda m: m.leaf == "cmd/result" and m.payload.get("command") == "mask", 30, "the answer to cmd/mask"
        ).payload
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait(30)
    assert answer["ok"] is False and "not a segmentation model" in answer["message"], answer
    assert col.on("mask") == []
