"""Detection: SSD (TFLite_Detection_PostProcess) and raw YOLO outputs → objects in frame pixels.

Layouts, recognized once when the pipeline is built (`postprocess.detection_layout` forces one):

* ``ssd``: four outputs, boxes [1, N, 4] (ymin, xmin, ymax, xmax, normalized to the model
  input), classes [1, N], scores [1, N], count [1]. TF1 exports list them in the op's order
  (boxes, classes, scores, count); TF2 exports list them in other orders under names such as
  ``StatefulPartitionedCall:K`` that say nothing. Which is which is decided, first to last:
  1. the graph: the outputs of the model's ``TFLite_Detection_PostProcess`` operator are by
     definition boxes, classes, scores, count, whatever order the model lists them in;
  2. ``postprocess.ssd_output_order``;
  3. shapes: [1, N, 4] is boxes, the one-value tensor is count;
  4. for the two [1, N] tensors, names ("class", "score", or TF1's
     ``TFLite_Detection_PostProcess:1``/``:2``);
  5. values, as a last resort: on the first frame with a detection where one of them holds a
     non-integral value (it is the scores: classes are integral); until then the TF1 order.
* ``yolo_v8``: one output [1, 4 + C, A] (or [1, A, 4 + C]): cx, cy, w, h then C class scores.
* ``yolo_v5``: one output [1, A, 5 + C]: cx, cy, w, h, objectness, then C class scores
  (score = objectness × class score). A [1, A, K] output is v5 unless the labels count is K - 4.

YOLO boxes are in model-input pixels or normalized (`postprocess.box_units`; "auto" takes a
frame's candidate boxes as normalized when none exceeds 2). They go through a vectorized NMS
(per class, or over all classes with `nms_per_class = false`). SSD boxes come out of the op's
own NMS. Then per-label thresholds (`label_thresholds`, else `threshold`), the label filters,
`max_objects`, and the mapping back through the preprocessing geometry (stretch, letterbox,
center_crop) into source-frame pixels, clipped to the frame; a box left with no area (it lay in
the letterbox padding or outside the crop) is dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig
from edge_agent.errors import ModelError
from edge_agent.postprocess.results import Box, Detections
from edge_agent.preprocess import FrameGeometry
from edge_agent.runtime.tensors import TensorInfo

log = logging.getLogger(__name__)

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
SSD_ROLES = ("boxes", "classes", "scores", "count")  # the op's own output order (= TF1's)
MAX_CLASS_ID = 65536  # larger SSD class ids are garbage, not classes
MAX_CANDIDATES = 512  # YOLO boxes entering NMS, best first (bounds the IoU matrix)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Layout:
    kind: str  # "ssd", "yolo_v5", "yolo_v8"
    how: str  # how it was recognized, for the describe/warning lines
    roles: dict[str, int] | None = None  # ssd: role -> output position (None: decided by values)
    transposed: bool = False  # yolo_v8 as [1, 4 + C, A]
    classes: int = 0  # yolo: C


def _classes_and_scores_by_name(outputs: Sequence[TensorInfo], pairs: list[int]) -> dict[str, int]:
    """Which of the two [1, N] outputs is classes and which scores, where their names say."""
    named: dict[str, int] = {}
    for i in pairs:
        name = outputs[i].name.lower()
        if "class" in name:
            named["classes"] = i
        elif "score" in name:
            named["scores"] = i
        elif m := re.search(r"tflite_detection_postprocess:(\d)$", name):
            role = SSD_ROLES[int(m.group(1))] if int(m.group(1)) < 4 else ""
            if role in ("classes", "scores"):
                named[role] = i
    return named


def _ssd_roles_by_shape_and_name(outputs: Sequence[TensorInfo]) -> tuple[dict[str, int] | None, str]:
    """Roles from shapes and names; None for classes/scores when the names do not say."""
    roles: dict[str, int] = {}
    pairs: list[int] = []
    for i, o in enumerate(outputs):
        size = int(np.prod(o.shape)) if o.shape else 1
        if len(o.shape) == 3 and o.shape[-1] == 4:
            roles["boxes"] = i
        elif size == 1:
            roles["count"] = i
        else:
            pairs.append(i)
    if set(roles) != {"boxes", "count"} or len(pairs) != 2:
        shapes = ", ".join(f"{o.name or i} {list(o.shape)}" for i, o in enumerate(outputs))
        raise ModelError(
            f"SSD detection outputs must be boxes [1, N, 4], classes [1, N], scores [1, N] and count [1]; got {shapes}",
            reason="outputs",
        )
    named = _classes_and_scores_by_name(outputs, pairs)
    if len(named) == 2 and named["classes"] != named["scores"]:
        return {**roles, **named}, "by shapes and names"
    return None, "by shapes; classes and scores by their values"


def _recognize_ssd(
    cfg: PostprocessConfig, outputs: Sequence[TensorInfo], custom_op_outputs: Sequence[tuple[str, tuple[int, ...]]]
) -> Layout:
    """An SSD layout's output roles: from its detection operator, the config, or shapes and names."""
    if len(outputs) != 4:
        raise ModelError(
            f"SSD detection models have 4 outputs (boxes, classes, scores, count); this one has {len(outputs)}",
            reason="outputs",
        )
    index_of = {o.index: i for i, o in enumerate(outputs)}
    for code, tensors in custom_op_outputs:
        if code == POSTPROCESS_OP and len(tensors) == 4 and all(t in index_of for t in tensors):
            by_op = {r: index_of[t] for r, t in zip(SSD_ROLES, tensors, strict=True)}
            return Layout("ssd", f"outputs of the model's {POSTPROCESS_OP} operator", by_op)
    if cfg.ssd_output_order:
        given: dict[str, int] = {str(r): i for i, r in enumerate(cfg.ssd_output_order)}
        boxes, count = outputs[given["boxes"]].shape, outputs[given["count"]].shape
        if len(boxes) != 3 or boxes[-1] != 4 or int(np.prod(count)) != 1:
            raise ModelError(
                f"postprocess.ssd_output_order {list(cfg.ssd_output_order)} does not fit the outputs: "
                f"boxes would be {list(boxes)} (expected [1, N, 4]) and count {list(count)} (expected [1])",
                reason="outputs",
            )
        return Layout("ssd", "postprocess.ssd_output_order", given)
    roles, how = _ssd_roles_by_shape_and_name(outputs)
    return Layout("ssd", how, roles)


def recognize(
    cfg: PostprocessConfig,
    outputs: Sequence[TensorInfo],
    custom_op_outputs: Sequence[tuple[str, tuple[int, ...]]] = (),
    num_labels: int = 0,
) -> Layout:
    """The layout of a detection model's outputs (a ModelError when it is none of them)."""
    forced = cfg.detection_layout
    has_op = any(code == POSTPROCESS_OP for code, _ in custom_op_outputs)
    if forced == "ssd" or (forced == "auto" and (len(outputs) == 4 or has_op)):
        return _recognize_ssd(cfg, outputs, custom_op_outputs)
    if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[0] != 1:
        shapes = ", ".join(str(list(o.shape)) for o in outputs)
        raise ModelError(
            "detection outputs are neither SSD (boxes, classes, scores, count) nor YOLO (one [1, 4+C, A] "
            f"or [1, A, 5+C] tensor): {shapes}; set postprocess.detection_layout if the model is one of them",
            reason="outputs",
        )
    _, d1, d2 = outputs[0].shape
    if forced == "yolo_v8" or (forced == "auto" and d1 < d2):
        transposed = d1 < d2
        k = d1 if transposed else d2
        if k < 5:
            raise ModelError(f"YOLOv8 output {list(outputs[0].shape)} has no class scores", reason="outputs")
        return Layout(
            "yolo_v8", "[1, 4 + C, A]" if transposed else "[1, A, 4 + C]", transposed=transposed, classes=k - 4
        )
    if forced == "auto" and num_labels and d2 - 4 == num_labels and d2 - 5 != num_labels:
        return Layout("yolo_v8", "[1, A, 4 + C] (C = the number of labels)", classes=d2 - 4)
    if d2 < 6:
        raise ModelError(f"YOLOv5 output {list(outputs[0].shape)} has no class scores", reason="outputs")
    return Layout("yolo_v5", "[1, A, 5 + C]", classes=d2 - 5)


def nms(boxes: F32, scores: F32, classes: npt.NDArray[np.int64] | None, iou: float) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression; `boxes` [n, 4] x1, y1, x2, y2 sorted by score, best
    first. With `classes`, boxes of different classes never suppress each other. Returns the
    positions kept, best first. The IoU matrix is computed at once; the greedy pass visits
    only the boxes that survive."""
    n = len(boxes)
    if n == 0:
        return np.empty(0, np.int64)
    b = boxes.astype(np.float32)
    if classes is not None:
        # shift each class into its own region of the plane: no IoU across classes
        span = float(np.abs(b).max()) * 2.0 + 1.0
        b = b + (classes.astype(np.float32) * np.float32(span))[:, None]
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    w = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area[:, None] + area[None, :] - inter
    overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0) > iou
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i]
    return np.asarray(keep, np.int64)


def to_frame_pixels(boxes: F32, frame: FrameGeometry) -> F32:
    """Model-input pixel boxes [n, 4] (x1, y1, x2, y2) → source-frame pixels, clipped to the frame."""
    g = frame.geometry
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0::2] = (boxes[:, 0::2] - g.offset_x) / g.scale_x + g.crop_x
    out[:, 1::2] = (boxes[:, 1::2] - g.offset_y) / g.scale_y + g.crop_y
    np.clip(out[:, 0::2], 0, frame.width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, frame.height, out=out[:, 1::2])
    return out


class DetectionDecoder:
    """Output tensors of one detection model → the `Detections` of one frame."""

    def __init__(
        self,
        cfg: PostprocessConfig,
        labels: dict[int, str],
        outputs: Sequence[TensorInfo],
        input_size: tuple[int, int],
        custom_op_outputs: Sequence[tuple[str, tuple[int, ...]]] = (),
    ) -> None:
        self.cfg = cfg
        self.labels = labels
        self.input_w, self.input_h = input_size
        self.layout = recognize(cfg, outputs, custom_op_outputs, len(labels))
        self._roles = self.layout.roles
        unknown = set(cfg.label_thresholds) - set(labels.values())
        if labels and unknown:
            log.warning(
                "postprocess.label_thresholds names labels the model does not have: %s", ", ".join(sorted(unknown))
            )
        width = self.layout.classes or max([*labels, -1]) + 1
        self._thresholds = self._threshold_table(max(width, 1))

    def describe(self) -> str:
        return f"detection layout {self.layout.kind} ({self.layout.how})"

    def label(self, index: int) -> str:
        return self.labels.get(index, str(index))

    def _threshold_table(self, n: int) -> F32:
        """Minimum score per class index; +inf for a class the label filters leave out."""
        table = np.full(n, self.cfg.threshold, np.float32)
        include, exclude = set(self.cfg.include_labels), set(self.cfg.exclude_labels)
        for i in range(n):
            name = self.label(i)
            if name in self.cfg.label_thresholds:
                table[i] = self.cfg.label_thresholds[name]
            if (include and name not in include) or name in exclude:
                table[i] = np.inf
        return table

    def _passes(self, classes: npt.NDArray[np.int64], scores: F32) -> npt.NDArray[np.bool_]:
        # an SSD class id beyond the labels widens the table (a wild one, garbage, is dropped)
        ok = (classes >= 0) & (classes < MAX_CLASS_ID) & (scores > 0)
        table = self._thresholds
        top = int(classes[ok].max()) if ok.any() else -1
        if top >= len(table):
            self._thresholds = table = self._threshold_table(top + 1)
        ok[ok] = scores[ok] >= table[classes[ok]]
        return ok

    # ---- per frame ----------------------------------------------------------------------
    def decode(self, outputs: Sequence[F32], frame: FrameGeometry) -> Detections:
        if self.layout.kind == "ssd":
            boxes, classes, scores = self._ssd(outputs)
        else:
            boxes, classes, scores = self._yolo(outputs[0])
        boxes = to_frame_pixels(boxes, frame)
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        objects = tuple(
            Box(self.label(int(c)), int(c), round(float(s), 6), _rounded_box(b))
            for b, c, s in zip(boxes[visible], classes[visible], scores[visible], strict=True)
        )
        return Detections(objects[: self.cfg.max_objects])

    def rows_in_use(self, outputs: Sequence[F32]) -> dict[int, int] | None:
        """SSD's detection op fills only its first `count` rows: output position → rows holding
        values. The rest is memory the op never wrote (often another tensor's leftovers, NaN
        included), which neither the guard nor the decoder may read. None for YOLO, or when the
        count itself is not a number (then every value is checked, and that is a fault)."""
        if self.layout.kind != "ssd":
            return None
        r = self._ssd_roles(outputs)
        c = float(outputs[r["count"]].ravel()[0])
        if not np.isfinite(c):
            return None
        n = int(np.clip(np.rint(c), 0, outputs[r["boxes"]].shape[-2]))
        return {r["boxes"]: n, r["classes"]: n, r["scores"]: n}

    def _ssd_roles(self, outputs: Sequence[F32]) -> dict[str, int]:
        if self._roles is not None:
            return self._roles
        roles, _ = _ssd_roles_by_shape_and_name_values(outputs)
        if roles is None:  # undecided yet: the TF1 order of the two
            a, b = sorted(i for i in range(4) if outputs[i].ndim == 2 and outputs[i].size > 1)
            boxes = next(i for i in range(4) if outputs[i].ndim == 3)
            count = next(i for i in range(4) if outputs[i].size == 1)
            return {"boxes": boxes, "classes": a, "scores": b, "count": count}
        self._roles = roles
        log.info("SSD outputs: classes and scores told apart by their values: %s", roles)
        return roles

    def _ssd(self, outputs: Sequence[F32]) -> tuple[F32, npt.NDArray[np.int64], F32]:
        r = self._ssd_roles(outputs)
        raw_boxes = outputs[r["boxes"]].reshape(-1, 4)
        n = len(raw_boxes)
        count = int(np.clip(np.rint(float(outputs[r["count"]].ravel()[0])), 0, n))
        classes = np.rint(outputs[r["classes"]].ravel()[:count]).astype(np.int64)
        scores = outputs[r["scores"]].ravel()[:count].astype(np.float32)
        ok = self._passes(classes, scores)
        order = np.argsort(-scores[ok], kind="stable")[: self.cfg.max_objects * 2]
        sel = np.flatnonzero(ok)[order]
        b = raw_boxes[sel]
        # ymin, xmin, ymax, xmax normalized → x1, y1, x2, y2 in model-input pixels
        px = np.stack(
            [b[:, 1] * self.input_w, b[:, 0] * self.input_h, b[:, 3] * self.input_w, b[:, 2] * self.input_h], 1
        )
        return px.astype(np.float32), classes[sel], scores[sel]

    def _yolo(self, out: F32) -> tuple[F32, npt.NDArray[np.int64], F32]:
        lay = self.layout
        rows = out[0].T if lay.transposed else out[0]  # [A, K], a view
        cls = rows[:, 5:] if lay.kind == "yolo_v5" else rows[:, 4:]
        obj = rows[:, 4] if lay.kind == "yolo_v5" else None
        if self.cfg.activation == "sigmoid":  # an export that leaves the scores as logits
            cls = _sigmoid(cls)
            obj = _sigmoid(obj) if obj is not None else None
        best = np.argmax(cls, axis=1)
        score = cls[np.arange(len(cls)), best].astype(np.float32)
        if obj is not None:
            score = score * obj
        ok = self._passes(best.astype(np.int64), score)
        cand = np.flatnonzero(ok)
        cand = cand[np.argsort(-score[cand], kind="stable")[:MAX_CANDIDATES]]
        xywh = rows[cand, :4].astype(np.float32)
        if self._normalized(xywh):
            xywh = xywh * np.array([self.input_w, self.input_h, self.input_w, self.input_h], np.float32)
        half = xywh[:, 2:] / 2
        boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
        classes = best[cand].astype(np.int64)
        keep = nms(boxes, score[cand], classes if self.cfg.nms_per_class else None, self.cfg.nms_iou)
        keep = keep[: self.cfg.max_objects * 2]  # spare ones for boxes that fall outside the frame
        return boxes[keep], classes[keep], score[cand][keep].astype(np.float32)

    def _normalized(self, xywh: F32) -> bool:
        units = self.cfg.box_units
        if units != "auto":
            return units == "normalized"
        return bool(xywh.size) and float(np.abs(xywh).max()) <= 2.0


def _rounded_box(b: F32) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 2) for v in b)
    return x1, y1, x2, y2


def _sigmoid(x: F32) -> F32:
    out: F32 = (1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))).astype(np.float32)
    return out


def _ssd_roles_by_shape_and_name_values(outputs: Sequence[F32]) -> tuple[dict[str, int] | None, str]:
    """The last resort: the [1, N] tensor holding a non-integral value among the first `count`
    entries is the scores (classes are integral); None while no frame has told them apart."""
    boxes = next(i for i in range(4) if outputs[i].ndim == 3)
    count_i = next(i for i in range(4) if outputs[i].size == 1)
    pair = sorted(i for i in range(4) if i not in (boxes, count_i))
    count = int(np.clip(np.rint(float(outputs[count_i].ravel()[0])), 0, outputs[pair[0]].size))
    if count == 0:
        return None, ""
    frac = [bool(np.any(outputs[i].ravel()[:count] != np.rint(outputs[i].ravel()[:count]))) for i in pair]
    if frac[0] == frac[1]:
        return None, ""
    scores, classes = (pair[0], pair[1]) if frac[0] else (pair[1], pair[0])
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count_i}, "values"
