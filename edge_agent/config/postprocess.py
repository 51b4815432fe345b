"""`[postprocess]`: turning output tensors into results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import TextStr


class PostprocessConfig(Section):
    top_k: int = Field(default=3, ge=1, le=1000)
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    activation: Literal["none", "softmax", "sigmoid"] = "none"
    include_labels: tuple[TextStr, ...] = ()
    exclude_labels: tuple[TextStr, ...] = ()
    # regression / raw: names of the output values in order, and their units
    value_names: tuple[TextStr, ...] = ()
    units: dict[TextStr, TextStr] = Field(default_factory=dict)
    # ---- pose ----
    keypoint_threshold: float = Field(
        default=0.2, ge=0.0, le=1.0, description="a keypoint scoring below this is listed with visible = false"
    )
    pose_threshold: float = Field(
        default=0.2, ge=0.0, le=1.0, description="multi-pose models: people scoring below this are left out"
    )
    # ---- segmentation ----
    mask_max_bytes: int = Field(
        default=256 * 1024, ge=1024, le=16 * 1024 * 1024, description="the `mask` command refuses a larger PNG"
    )
    # ---- detection ----
    # which output layout the model has; "auto" recognizes it from the outputs (see
    # edge_agent/postprocess/detection.py), the others force it when that is ambiguous
    detection_layout: Literal["auto", "ssd", "yolo_v5", "yolo_v8"] = "auto"
    # SSD: the four outputs' roles in output order, when neither the graph nor the names say it
    ssd_output_order: tuple[Literal["boxes", "classes", "scores", "count"], ...] = ()
    # YOLO: box centres and sizes in model-input pixels or normalized to [0, 1]
    box_units: Literal["auto", "pixels", "normalized"] = "auto"
    label_thresholds: dict[TextStr, float] = Field(default_factory=dict)  # label -> min score
    max_objects: int = Field(default=20, ge=1, le=1000)
    nms_iou: float = Field(default=0.45, gt=0.0, le=1.0)
    nms_per_class: bool = True  # False: one NMS over all classes (class-agnostic)

    @model_validator(mode="after")
    def _filters(self) -> PostprocessConfig:
        both = set(self.include_labels) & set(self.exclude_labels)
        if both:
            raise ValueError(f"postprocess: labels both included and excluded: {', '.join(sorted(both))}")
        unknown = set(self.units) - set(self.value_names)
        if self.value_names and unknown:
            raise ValueError(f"postprocess.units: names not in value_names: {', '.join(sorted(unknown))}")
        return self

    @model_validator(mode="after")
    def _detection(self) -> PostprocessConfig:
        bad = {k: v for k, v in self.label_thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"postprocess.label_thresholds: scores must be in [0, 1]: {bad}")
        order = self.ssd_output_order
        if order and sorted(order) != ["boxes", "classes", "count", "scores"]:
            raise ValueError(
                f"postprocess.ssd_output_order: {list(order)} must name boxes, classes, scores and count once each"
            )
        return self
