"""`[postprocess]`: turning output tensors into results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config._base import Section


class PostprocessConfig(Section):
    top_k: int = Field(default=3, ge=1, le=1000)
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    activation: Literal["none", "softmax", "sigmoid"] = "none"
    include_labels: tuple[str, ...] = ()
    exclude_labels: tuple[str, ...] = ()
    # regression / raw: names of the output values in order, and their units
    value_names: tuple[str, ...] = ()
    units: dict[str, str] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _filters(self) -> PostprocessConfig:
        both = set(self.include_labels) & set(self.exclude_labels)
        if both:
            raise ValueError(f"postprocess: labels both included and excluded: {', '.join(sorted(both))}")
        unknown = set(self.units) - set(self.value_names)
        if self.value_names and unknown:
            raise ValueError(f"postprocess.units: names not in value_names: {', '.join(sorted(unknown))}")
        return self
