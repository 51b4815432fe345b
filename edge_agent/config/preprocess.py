"""`[preprocess]`: the training transform the agent must reproduce exactly.

prepared = (pixel * scale - mean) / std per channel, then quantized with the input tensor's
own scale and zero point when the tensor is an integer type. For vectors, each feature is
z = (x - mean) / std, with a missing value imputed before standardization.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import TextStr

Impute = Literal["mean", "zero", "skip"]


class FeatureConfig(Section):
    name: TextStr
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    min: float | None = None
    max: float | None = None
    impute: Impute | float = Field(
        default="mean",
        description="missing value: 'mean' (the training mean), 'zero' (a raw 0), "
        "'skip' (drop the row), or a number in raw units",
    )

    @field_validator("mean", "std", "min", "max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("impute")
    @classmethod
    def _finite_impute(cls, v: Impute | float) -> Impute | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a number in raw units must be finite")
        return v

    @model_validator(mode="after")
    def _range(self) -> FeatureConfig:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be less than max ({self.max})")
        return self


class PreprocessConfig(Section):
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    interpolation: Literal["nearest", "linear", "area", "cubic"] = "linear"
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    scale: float = Field(default=1.0, gt=0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pad_value: int = Field(default=0, ge=0, le=255, description="letterbox padding, in pixel units")
    features: tuple[FeatureConfig, ...] = ()

    @field_validator("scale")
    @classmethod
    def _finite_scale(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _channels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) not in (1, 3):
            raise ValueError(f"must hold 1 value or 3 (one per channel), got {len(v)}")
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must hold finite numbers")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0, got {list(v)}")
        return v

    @field_validator("features")
    @classmethod
    def _unique_names(cls, v: tuple[FeatureConfig, ...]) -> tuple[FeatureConfig, ...]:
        names = [f.name for f in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be unique, repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _gray_single_channel(self) -> PreprocessConfig:
        if self.color == "gray" and (len(self.mean) == 3 or len(self.std) == 3):
            raise ValueError("preprocess: color = 'gray' takes one mean and one std, not three")
        return self
