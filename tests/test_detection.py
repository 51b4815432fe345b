"""Detection decoding: SSD (TFLite_Detection_PostProcess) and raw YOLO outputs.

Constructed tensors cover the layouts and edge cases; the bundled digit detector (both
exports, made by scripts/make_models.py) is run through the pipeline and, end to end, through
the real agent and broker on held-out canvases fed letterboxed at another size and aspect.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import Collector, run_agent, write_config
from pydantic import ValidationError

from edge_agent.broker import LocalBroker
from edge_agent.config import PostprocessConfig, parse_config
from edge_agent.errors import ModelError
from edge_agent.pipeline import Inference, Pipeline
from edge_agent.postprocess.detection import DetectionDecoder, FrameGeometry, nms, recognize
from edge_agent.preprocess import ImagePlan, ImageTransform
from edge_agent.runtime.tensors import TensorInfo, dequantize
from edge_agent.sources.base import Frame
from schemas import validate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import detection_models

LABELS = {i: name for i, name in enumerate(detection_models.LABELS)}
CANVASES = BUNDLED / "detection_canvases"
TRUTH = BUNDLED / "detection_canvases.json"
N = 10  # SSD max detections in the constructed tensors


def info(
    name: str, shape: tuple[int, ...], index: int = 0, *, scale: float = 0.0, zp: int = 0, dtype: Any = np.float32
) -> TensorInfo:
    return TensorInfo(name, index, shape, np.dtype(dtype), scale, zp)


def ssd_infos(names: tuple[str, str, str, str] = ("b", "c", "s", "n"), order: str = "bcsn") -> list[TensorInfo]:
    shapes = {"b": (1, N, 4), "c": (1, N), "s": (1, N), "n": (1,)}
    return [info(names[i], shapes[k], index=10 + i) for i, k in enumerate(order)]


TF1_NAMES = (
    "TFLite_Detection_PostProcess",
    "TFLite_Detection_PostProcess:1",
    "TFLite_Detection_PostProcess:2",
    "TFLite_Detection_PostProcess:3",
)


def ssd_tensors(
    dets: list[tuple[int, float, tuple[float, float, float, float]]], *, junk: bool = True
) -> dict[str, np.ndarray]:
    """boxes/classes/scores/count as the op writes them; the entries past `count` hold junk
    (the op leaves whatever was there), which the decoder must ignore."""
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (1, N, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(2), corners.max(2)], -1) if junk else np.zeros((1, N, 4), np.float32)
    classes = rng.integers(0, 10, (1, N)).astype(np.float32) if junk else np.zeros((1, N), np.float32)
    scores = rng.uniform(0.9, 1, (1, N)).astype(np.float32) if junk else np.zeros((1, N), np.float32)
    for i, (c, s, b) in enumerate(dets):
        boxes[0, i], classes[0, i], scores[0, i] = b, c, s
    return {"b": boxes, "c": classes, "s": scores, "n": np.array([len(dets)], np.float32)}


def identity_frame(w: int = 96, h: int = 96) -> FrameGeometry:
    plan = ImagePlan(ImageTransform(resize="stretch"), info("in", (1, 96, 96, 3)), (h, w, 3))
    return FrameGeometry(plan.geometry, w, h)


def decoder(
    cfg: dict[str, Any] | None = None, outputs: list[TensorInfo] | None = None, custom: tuple[Any, ...] = ()
) -> DetectionDecoder:
    return DetectionDecoder(PostprocessConfig(**(cfg or {})), LABELS, outputs or ssd_infos(TF1_NAMES), (96, 96), custom)


def run_ssd(
    dec: DetectionDecoder, t: dict[str, np.ndarray], order: str = "bcsn", frame: FrameGeometry | None = None
) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = dec.decode([t[k] for k in order], frame or identity_frame()).to_payload()["objects"]
    return objects


# ---- SSD layout ----------------------------------------------------------------------------
def test_ssd_tf1_order_by_names_and_boxes_in_pixels() -> None:
    dec = decoder()
    assert dec.layout.kind == "ssd" and dec.layout.roles == {"boxes": 0, "classes": 1, "scores": 2, "count": 3}
    objs = run_ssd(dec, ssd_tensors([(3, 0.9, (0.25, 0.5, 0.75, 1.0)), (7, 0.6, (0.0, 0.0, 0.5, 0.25))]))
    assert objs == [
        {"label": "three", "index": 3, "score": 0.9, "box": [48.0, 24.0, 96.0, 72.0]},
        {"label": "seven", "index": 7, "score": 0.6, "box": [0.0, 0.0, 24.0, 48.0]},
    ]


def test_ssd_tf2_order_told_by_the_graph_op_whatever_the_names() -> None:
    """TF2 exports list scores, boxes, count, classes under names that say nothing; the
    TFLite_Detection_PostProcess operator's outputs (boxes, classes, scores, count) decide."""
    names = (
        "StatefulPartitionedCall:1",
        "StatefulPartitionedCall:3",
        "StatefulPartitionedCall:0",
        "StatefulPartitionedCall:2",
    )
    outs = ssd_infos(names, order="sbnc")  # tensor indices 10..13 in that order
    # the op writes boxes → 11, classes → 13, scores → 10, count → 12
    custom = (("TFLite_Detection_PostProcess", (11, 13, 10, 12)),)
    dec = decoder(outputs=outs, custom=custom)
    assert dec.layout.roles == {"boxes": 1, "classes": 3, "scores": 0, "count": 2}
    assert "operator" in dec.describe()
    objs = run_ssd(dec, ssd_tensors([(2, 0.8, (0.1, 0.1, 0.2, 0.2))]), order="sbnc")
    assert [(o["index"], o["score"]) for o in objs] == [(2, 0.8)]


def test_ssd_tf2_order_without_graph_or_names_decided_by_values() -> None:
    names = (
        "StatefulPartitionedCall:1",
        "StatefulPartitionedCall:3",
        "StatefulPartitionedCall:0",
        "StatefulPartitionedCall:2",
    )
    dec = decoder(outputs=ssd_infos(names, order="sbnc"))
    assert dec.layout.roles is None  # undecided until a frame tells classes from scores
    # an empty frame decides nothing
    assert run_ssd(dec, ssd_tensors([], junk=False), order="sbnc") == []
    objs = run_ssd(dec, ssd_tensors([(4, 0.7, (0.5, 0.5, 1.0, 1.0)), (9, 0.55, (0, 0, 0.25, 0.25))]), order="sbnc")
    assert [(o["label"], o["score"]) for o in objs] == [("four", 0.7), ("nine", 0.55)]
    # decided once: the next frame reads the same roles
    assert dec._roles == {"boxes": 1, "classes": 3, "scores": 0, "count": 2}


def test_ssd_output_order_from_config_and_its_errors() -> None:
    dec = decoder({"ssd_output_order": ["scores", "boxes", "count", "classes"]}, outputs=ssd_infos(order="sbnc"))
    assert dec.layout.how == "postprocess.ssd_output_order"
    assert run_ssd(dec, ssd_tensors([(1, 0.9, (0, 0, 0.5, 0.5))]), order="sbnc")[0]["label"] == "one"
    with pytest.raises(ModelError, match="does not fit the outputs"):
        decoder({"ssd_output_order": ["boxes", "scores", "count", "classes"]}, outputs=ssd_infos(order="sbnc"))
    with pytest.raises(ValidationError, match="must name boxes, classes, scores and count once each"):
        PostprocessConfig(ssd_output_order=["boxes", "boxes", "count", "classes"])


def test_ssd_with_unexpected_shapes_is_a_one_line_model_error() -> None:
    outs = [info("a", (1, N, 4)), info("b", (1, N)), info("c", (1, N, 4)), info("d", (1,))]
    with pytest.raises(ModelError) as e:
        decoder(outputs=outs)
    assert "\n" not in str(e.value) and "boxes [1, N, 4]" in str(e.value)
    with pytest.raises(ModelError, match="neither SSD"):
        decoder(outputs=[info("logits", (1, 10))])


def test_no_detections_and_all_below_threshold() -> None:
    dec = decoder({"threshold": 0.5})
    assert run_ssd(dec, ssd_tensors([])) == []  # count 0: the junk after it is ignored
    assert run_ssd(dec, ssd_tensors([(1, 0.3, (0, 0, 1, 1)), (2, 0.49, (0, 0, 1, 1))])) == []


def test_count_below_n_ignores_the_rest_and_a_wild_count_is_clamped() -> None:
    t = ssd_tensors([(5, 0.8, (0, 0, 0.5, 0.5))])
    assert len(run_ssd(decoder(), t)) == 1
    t["n"][0] = 1e9  # a broken count: at most N entries are read
    assert len(run_ssd(decoder({"max_objects": 50}), t)) == N
    t["n"][0] = -3
    assert run_ssd(decoder(), t) == []
    t["n"][0], t["c"][0, 0] = 1, 3e9  # a wild class id is no class
    assert run_ssd(decoder(), t) == []
    t["c"][0, 0] = 90  # beyond the labels: named by its index
    assert run_ssd(decoder(), t)[0]["label"] == "90"


def test_per_label_thresholds_filters_and_max_objects() -> None:
    dets = [
        (1, 0.9, (0, 0, 0.2, 0.2)),
        (2, 0.6, (0, 0.3, 0.2, 0.5)),
        (3, 0.4, (0.5, 0.5, 0.7, 0.7)),
        (2, 0.35, (0.8, 0.8, 1, 1)),
    ]
    t = ssd_tensors(dets)
    got = run_ssd(decoder({"threshold": 0.5, "label_thresholds": {"three": 0.3, "one": 0.95}}), t)
    assert [(o["label"], o["score"]) for o in got] == [("two", 0.6), ("three", 0.4)]
    got = run_ssd(decoder({"threshold": 0.3, "exclude_labels": ["two"]}), t)
    assert [o["label"] for o in got] == ["one", "three"]
    got = run_ssd(decoder({"threshold": 0.3, "include_labels": ["two"]}), t)
    assert [o["score"] for o in got] == [0.6, 0.35]
    assert len(run_ssd(decoder({"max_objects": 2}), t)) == 2
    with pytest.raises(ValidationError, match="label_thresholds"):
        PostprocessConfig(label_thresholds={"one": 1.5})


def test_boxes_outside_the_frame_are_clipped_and_boxes_in_the_padding_dropped() -> None:
    # a 160×120 frame letterboxed into 96×96: content 96×72 at y 12..84, padding above and below
    plan = ImagePlan(ImageTransform(resize="letterbox"), info("in", (1, 96, 96, 3)), (120, 160, 3))
    frame = FrameGeometry(plan.geometry, 160, 120)
    dets = [
        (1, 0.9, (-0.2, -0.1, 0.5, 0.5)),  # sticks out top-left of the input
        (2, 0.8, (0.5, 0.5, 1.3, 1.2)),  # sticks out bottom-right
        (3, 0.7, (0.0, 0.2, 0.1, 0.4)),  # wholly in the top padding (y < 12/96)
    ]
    got = run_ssd(decoder(), ssd_tensors(dets), frame=frame)
    assert [o["label"] for o in got] == ["one", "two"]
    assert got[0]["box"] == [0.0, 0.0, 80.0, 60.0]
    assert got[1]["box"] == [80.0, 60.0, 160.0, 120.0]


def test_a_nan_past_the_guard_never_reaches_a_result() -> None:
    """The pipeline's output guard withholds NaN outputs before decoding (tests/test_guard*);
    should one get this far, no object carries it."""
    t = ssd_tensors([(1, 0.9, (0, 0, 0.5, 0.5)), (2, 0.8, (0.5, 0.5, 1, 1))])
    t["s"][0, 0] = np.nan
    t["b"][0, 1, 0] = np.nan
    assert run_ssd(decoder(), t) == []


def test_quantized_ssd_outputs_dequantized_as_the_pipeline_does() -> None:
    """Coral SSDs output uint8 boxes/scores with their own scale; fetch_outputs dequantizes
    them with runtime.tensors.dequantize before the decoder sees them."""
    t = ssd_tensors([(6, 0.83, (0.1, 0.2, 0.6, 0.9))], junk=False)
    qb = info("b", (1, N, 4), scale=1 / 255, zp=0, dtype=np.uint8)
    qs = info("s", (1, N), scale=1 / 256, zp=0, dtype=np.uint8)
    raw_b = np.clip(np.rint(t["b"] / qb.scale), 0, 255).astype(np.uint8)
    raw_s = np.clip(np.rint(t["s"] / qs.scale), 0, 255).astype(np.uint8)
    outs = {"b": dequantize(qb, raw_b), "c": t["c"], "s": dequantize(qs, raw_s), "n": t["n"]}
    (obj,) = run_ssd(decoder(), outs)
    assert obj["label"] == "six" and abs(obj["score"] - 0.83) <= 1 / 256
    assert np.allclose(obj["box"], [0.2 * 96, 0.1 * 96, 0.9 * 96, 0.6 * 96], atol=96 / 255)


# ---- YOLO layouts --------------------------------------------------------------------------
def yolo_rows(
    objs: list[tuple[float, float, float, float, int, float]], anchors: int = 20, classes: int = 10, *, v5: bool = False
) -> np.ndarray:
    """[A, 4 + C] (v8) or [A, 5 + C] (v5) rows; the first rows hold `objs` (cx, cy, w, h,
    class, score), the rest background with low scores."""
    rng = np.random.default_rng(1)
    k = 5 + classes if v5 else 4 + classes
    rows = np.zeros((anchors, k), np.float32)
    rows[:, :4] = rng.uniform(10, 80, (anchors, 4))
    rows[:, -classes:] = rng.uniform(0, 0.05, (anchors, classes))
    if v5:
        rows[:, 4] = rng.uniform(0, 0.1, anchors)
    for i, (cx, cy, w, h, c, s) in enumerate(objs):
        rows[i, :4] = (cx, cy, w, h)
        if v5:
            rows[i, 4] = 1.0
        rows[i, -classes + c] = s
    return rows


def test_yolo_v8_channels_first_and_last() -> None:
    rows = yolo_rows([(30, 40, 20, 10, 3, 0.9)])
    first = DetectionDecoder(PostprocessConfig(threshold=0.5), LABELS, [info("o", (1, 14, 20))], (96, 96))
    assert first.layout.kind == "yolo_v8" and first.layout.transposed
    got = first.decode([rows.T[None]], identity_frame()).to_payload()["objects"]
    assert got == [{"label": "three", "index": 3, "score": 0.9, "box": [20.0, 35.0, 40.0, 45.0]}]
    # [1, A, 4 + C]: v8 and not v5 because 4 + C fits the 10 labels (and 5 + C does not)
    last = DetectionDecoder(PostprocessConfig(threshold=0.5), LABELS, [info("o", (1, 20, 14))], (96, 96))
    assert last.layout.kind == "yolo_v8" and not last.layout.transposed
    assert last.decode([rows[None]], identity_frame()).to_payload()["objects"] == got


def test_yolo_v5_objectness_multiplies_the_class_score() -> None:
    rows = yolo_rows([(30, 40, 20, 10, 3, 0.9), (70, 70, 10, 10, 5, 0.9)], v5=True)
    rows[1, 4] = 0.4  # objectness 0.4 × class 0.9 = 0.36 < 0.5
    dec = DetectionDecoder(PostprocessConfig(threshold=0.5), LABELS, [info("o", (1, 20, 15))], (96, 96))
    assert dec.layout.kind == "yolo_v5"
    got = dec.decode([rows[None]], identity_frame()).to_payload()["objects"]
    assert [(o["label"], o["score"]) for o in got] == [("three", 0.9)]
    forced = DetectionDecoder(PostprocessConfig(detection_layout="yolo_v8"), LABELS, [info("o", (1, 20, 15))], (96, 96))
    assert forced.layout.kind == "yolo_v8" and forced.layout.classes == 11


def test_yolo_normalized_boxes_and_logit_scores() -> None:
    rows = yolo_rows([(0.5, 0.25, 0.5, 0.25, 7, 3.0)])  # logits: sigmoid(3) = 0.9526
    rows[1:, -10:] = -6.0
    cfg = PostprocessConfig(threshold=0.5, activation="sigmoid")
    dec = DetectionDecoder(cfg, LABELS, [info("o", (1, 20, 14))], (96, 96))
    (obj,) = dec.decode([rows[None]], identity_frame()).to_payload()["objects"]
    assert obj["label"] == "seven" and obj["score"] == pytest.approx(0.952574, abs=1e-6)
    assert obj["box"] == [24.0, 12.0, 72.0, 36.0]
    pixels = DetectionDecoder(
        PostprocessConfig(threshold=0.5, activation="sigmoid", box_units="pixels"),
        LABELS,
        [info("o", (1, 20, 14))],
        (96, 96),
    )
    assert pixels.decode([rows[None]], identity_frame()).to_payload()["objects"][0]["box"] == [0.25, 0.12, 0.75, 0.38]


def test_nms_merges_overlaps_and_keeps_distinct_boxes() -> None:
    objs = [
        (30, 30, 20, 20, 1, 0.9),
        (31, 31, 20, 20, 1, 0.8),  # same object, same class: suppressed
        (32, 30, 20, 20, 2, 0.7),  # same place, another class: kept per class
        (70, 70, 20, 20, 1, 0.6),  # elsewhere: kept
    ]
    rows = yolo_rows(objs)
    per_class = DetectionDecoder(PostprocessConfig(threshold=0.5), LABELS, [info("o", (1, 20, 14))], (96, 96))
    got = per_class.decode([rows[None]], identity_frame()).to_payload()["objects"]
    assert [(o["label"], o["score"]) for o in got] == [("one", 0.9), ("two", 0.7), ("one", 0.6)]
    agnostic = DetectionDecoder(
        PostprocessConfig(threshold=0.5, nms_per_class=False), LABELS, [info("o", (1, 20, 14))], (96, 96)
    )
    got = agnostic.decode([rows[None]], identity_frame()).to_payload()["objects"]
    assert [(o["label"], o["score"]) for o in got] == [("one", 0.9), ("one", 0.6)]
    loose = DetectionDecoder(PostprocessConfig(threshold=0.5, nms_iou=0.95), LABELS, [info("o", (1, 20, 14))], (96, 96))
    assert len(loose.decode([rows[None]], identity_frame()).to_payload()["objects"]) == 4


def test_nms_function_against_a_plain_greedy_loop() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 80, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (200, 2))], 1).astype(np.float32)
    classes = rng.integers(0, 3, 200)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))

    for cls in (classes, None):
        want: list[int] = []
        for i in range(len(boxes)):
            if all((cls is not None and cls[i] != cls[j]) or iou(boxes[i], boxes[j]) <= 0.45 for j in want):
                want.append(i)
        assert nms(boxes, np.zeros(200, np.float32), cls, 0.45).tolist() == want
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None, 0.5).size == 0


def test_quantized_yolo_output() -> None:
    """An int8 YOLO output (one scale for boxes and scores), dequantized as fetch_outputs does."""
    rows = yolo_rows([(30, 40, 20, 10, 3, 0.9)])
    q = info("o", (1, 14, 20), scale=0.5, zp=-100, dtype=np.int8)
    raw = np.clip(np.rint(rows.T[None] / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    dec = DetectionDecoder(PostprocessConfig(threshold=0.3), LABELS, [q], (96, 96))
    (obj,) = dec.decode([dequantize(q, raw)], identity_frame()).to_payload()["objects"]
    assert obj["label"] == "three" and obj["score"] == 1.0  # 0.9 quantized with scale 0.5
    assert obj["box"] == [20.0, 35.0, 40.0, 45.0]


def test_recognize_rejects_yolo_without_classes() -> None:
    with pytest.raises(ModelError, match="no class scores"):
        recognize(PostprocessConfig(), [info("o", (1, 4, 100))])


# ---- geometry: model-input pixels → source-frame pixels ---------------------------------------
@pytest.mark.parametrize(
    ("resize", "model_box", "source_box"),
    [
        # 160×120 into 96×96
        ("stretch", (48, 48, 96, 96), (80.0, 60.0, 160.0, 120.0)),  # scale 0.6 × 0.8
        ("letterbox", (0, 12, 96, 84), (0.0, 0.0, 160.0, 120.0)),  # r 0.6, content at y 12..84
        ("letterbox", (48, 48, 72, 60), (80.0, 60.0, 120.0, 80.0)),
        ("center_crop", (0, 0, 96, 96), (20.0, 0.0, 140.0, 120.0)),  # 120×120 crop at x 20, scale 0.8
        ("center_crop", (24, 48, 48, 72), (50.0, 60.0, 80.0, 90.0)),
    ],
)
def test_mapping_through_the_preprocessing_geometry(
    resize: str, model_box: tuple[int, ...], source_box: tuple[float, ...]
) -> None:
    plan = ImagePlan(ImageTransform(resize=resize), info("in", (1, 96, 96, 3)), (120, 160, 3))
    frame = FrameGeometry(plan.geometry, 160, 120)
    x1, y1, x2, y2 = (v / 96 for v in model_box)
    (obj,) = run_ssd(decoder(), ssd_tensors([(0, 0.9, (y1, x1, y2, x2))]), frame=frame)
    assert obj["box"] == pytest.approx(list(source_box), abs=0.01)


# ---- the bundled detector through the pipeline ------------------------------------------------
def truth() -> dict[str, list[tuple[int, list[float]]]]:
    doc = json.loads(TRUTH.read_text())
    assert doc["size"] == [160, 120]
    return {k: [(o["index"], o["box"]) for o in v] for k, v in doc["images"].items()}


def pipeline_for(model: str, **post: Any) -> Pipeline:
    cfg = parse_config(
        {
            "model": {
                "path": str(BUNDLED / model),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "task": "detection",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "letterbox", "color": "rgb", "scale": 1 / 255, "pad_value": 0},
            "postprocess": {"threshold": 0.05, **post},
        }
    )
    return Pipeline.load(cfg)


@pytest.mark.parametrize(("model", "layout"), [("detect_ssd.tflite", "ssd"), ("detect_yolo.tflite", "yolo_v8")])
def test_bundled_detector_through_the_pipeline(model: str, layout: str) -> None:
    p = pipeline_for(model)
    try:
        assert p.detector.layout.kind == layout
        if layout == "ssd":  # the TF2-style names say nothing: the graph's op told the roles
            assert "operator" in p.detector.layout.how
        predicted = {}
        gt = truth()
        names = sorted(gt)[:20]
        for i, name in enumerate(names):
            bgr = cv2.imread(str(CANVASES / name), cv2.IMREAD_COLOR)
            out = p.process(Frame(i, time.time(), time.monotonic(), name, pixels=bgr, order="bgr"))
            assert isinstance(out, Inference), out
            for o in out.result.to_payload()["objects"]:
                x1, y1, x2, y2 = o["box"]
                assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120, o
            predicted[name] = [(o["index"], o["score"], o["box"]) for o in out.result.to_payload()["objects"]]
        m, _ = detection_models.mean_average_precision({k: gt[k] for k in names}, predicted)
        assert m >= 0.85, m
    finally:
        p.close()


def test_detection_task_on_a_classifier_is_a_one_line_model_error() -> None:
    cfg = parse_config(
        {"model": {"path": str(BUNDLED / "digits_float.tflite"), "task": "detection", "interpreter": INTERPRETER}}
    )
    with pytest.raises(ModelError) as e:
        Pipeline.load(cfg)
    assert "neither SSD" in str(e.value) and "\n" not in str(e.value)


def test_coral_ssd_real_outputs(coral: Path) -> None:
    model = coral / "ssd_mobilenet_v2_coco_quant_postprocess.tflite"
    """Coral's uint8 SSD (its dequantized outputs) on grace_hopper.bmp: a person. Not run here:
    the shared test data has no detection model."""
    if not model.exists():
        pytest.skip(f"no Coral SSD detection model in {coral} (only classification and pose models are there)")
    labels = coral / "coco_labels.txt"
    cfg = parse_config(
        {
            "model": {
                "path": str(model),
                "task": "detection",
                "interpreter": INTERPRETER,
                **({"labels": str(labels)} if labels.exists() else {}),
            },
            "preprocess": {"resize": "stretch", "color": "rgb"},
            "postprocess": {"threshold": 0.5},
        }
    )
    p = Pipeline.load(cfg)
    try:
        bgr = cv2.imread(str(coral / "grace_hopper.bmp"), cv2.IMREAD_COLOR)
        out = p.process(Frame(0, time.time(), time.monotonic(), "grace_hopper.bmp", pixels=bgr, order="bgr"))
        assert isinstance(out, Inference), out
        h, w = bgr.shape[:2]
        people = [o for o in out.result.to_payload()["objects"] if o["index"] == 0]  # COCO class 0: person
        assert people, out.result.to_payload()
        x1, y1, x2, y2 = people[0]["box"]
        assert (x2 - x1) * (y2 - y1) > 0.2 * w * h  # she fills much of the picture
    finally:
        p.close()


# ---- end to end: the real agent, the real broker -------------------------------------------
@pytest.mark.parametrize("model", ["detect_ssd.tflite", "detect_yolo.tflite"])
def test_heldout_canvases_map50_through_the_agent(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, model: str
) -> None:
    """160×120 canvases fed letterboxed into the 96×96 input; mAP@0.5 from the published
    boxes against the ground truth in source-frame pixels."""
    gt = truth()
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(CANVASES), "loop": False, "exit_when_done": True},
            "model": {
                "path": str(BUNDLED / model),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "task": "detection",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "letterbox", "color": "rgb", "scale": 1 / 255, "pad_value": 0},
            "postprocess": {"threshold": 0.05, "max_objects": 10},
        },
    )
    proc = run_agent(cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    col.wait_status("offline", 15)
    results = col.on("results")
    assert {r["frame"]["source"] for r in results} == set(gt), "a canvas without a result"
    predicted = {}
    for r in results:
        validate("result", r)
        assert r["task"] == "detection" and isinstance(r["objects"], list)
        predicted[r["frame"]["source"]] = [(o["index"], o["score"], o["box"]) for o in r["objects"]]
    m, per_class = detection_models.mean_average_precision(gt, predicted)
    print(f"{model}: mAP@0.5 {m:.4f} over {len(gt)} canvases through the agent")
    assert m >= 0.9, (m, per_class)
    # and the confident boxes alone find nearly every digit at IoU >= 0.5
    found = total = 0
    for name, objs in gt.items():
        for c, box in objs:
            total += 1
            same = [b for cc, s, b in predicted[name] if cc == c and s >= 0.5]
            found += bool(same) and float(detection_models.iou(np.asarray(box, float), same).max()) >= 0.5
    assert found / total >= 0.9, (found, total)
