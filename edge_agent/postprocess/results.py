"""What the decoders return: one frozen value per frame and task, typed, in frame pixels.

The values are rounded as they are published (scores to 6 decimals, pixel coordinates to 2),
so a consumer in the process (`check`, the bench) reads the very numbers a subscriber gets.
Only `to_payload()` makes dicts, for the publisher: the task's fields of the result message
(SPEC.md, schemas/result.schema.json), their keys in the order they have always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Scored:
    """One class of a classification, with its score after the activation."""

    index: int
    label: str
    score: float

    def to_payload(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": self.score}


@dataclass(frozen=True, slots=True)
class Classification:
    top: tuple[Scored, ...]  # highest first

    def to_payload(self) -> dict[str, Any]:
        return {"top": [s.to_payload() for s in self.top]}


@dataclass(frozen=True, slots=True)
class Box:
    """One detected object; `box` is x1, y1, x2, y2 in source-frame pixels."""

    label: str
    index: int
    score: float
    box: tuple[float, float, float, float]

    def to_payload(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score, "box": list(self.box)}


@dataclass(frozen=True, slots=True)
class Detections:
    objects: tuple[Box, ...]  # best first

    def to_payload(self) -> dict[str, Any]:
        return {"objects": [o.to_payload() for o in self.objects]}


@dataclass(frozen=True, slots=True)
class Keypoint:
    name: str
    x: float
    y: float
    score: float
    visible: bool  # scored at least keypoint_threshold and inside the frame

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "x": self.x, "y": self.y, "score": self.score, "visible": self.visible}


@dataclass(frozen=True, slots=True)
class Person:
    """One pose of a multi-pose model: its score, box (x1, y1, x2, y2) and keypoints."""

    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...]

    def to_payload(self) -> dict[str, Any]:
        return {"score": self.score, "box": list(self.box), "keypoints": [k.to_payload() for k in self.keypoints]}


@dataclass(frozen=True, slots=True)
class Pose:
    """The best pose's keypoints and score; `poses` is None for a single-pose model (the
    payload then has no `poses` key) and every pose above the threshold for a multi-pose one."""

    keypoints: tuple[Keypoint, ...]
    pose_score: float
    poses: tuple[Person, ...] | None = None

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keypoints": [k.to_payload() for k in self.keypoints], "pose_score": self.pose_score}
        if self.poses is not None:
            out["poses"] = [p.to_payload() for p in self.poses]
        return out


@dataclass(frozen=True, slots=True)
class Share:
    """The part of the frame one segmentation class covers."""

    index: int
    label: str
    fraction: float

    def to_payload(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "fraction": self.fraction}


@dataclass(frozen=True, slots=True)
class Segmentation:
    classes: tuple[Share, ...]  # largest first

    def to_payload(self) -> dict[str, Any]:
        return {"classes": [c.to_payload() for c in self.classes]}


@dataclass(frozen=True, slots=True)
class Values:
    """Regression and raw outputs: (name, value) in output order, and the configured units."""

    values: tuple[tuple[str, float], ...]
    units: tuple[tuple[str, str], ...] = ()

    def to_payload(self) -> dict[str, Any]:
        # a name given twice keeps its last value, as the JSON object always did
        out: dict[str, Any] = {"values": dict(self.values)}
        if self.units:
            out["units"] = dict(self.units)
        return out


Result = Classification | Detections | Pose | Segmentation | Values
