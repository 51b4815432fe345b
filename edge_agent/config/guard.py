"""`[guard]`: the checks that keep garbage out of results, and what repeated faults trigger."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config._base import Section


class GuardConfig(Section):
    # output checks: NaN/Inf on every output of every frame; saturation; stuck outputs
    check_outputs: bool = True
    pinned_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="an integer output with this share of values at its dtype's max is saturated",
    )
    stuck_after: int = Field(
        default=100,
        ge=0,
        le=1_000_000_000,
        description="identical outputs over this many checked, different frames: output_stuck (0: off)",
    )
    # input checks
    check_inputs: bool = True
    input_check_every: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="check input statistics every Nth frame; 0: as often as budget_percent allows",
    )
    budget_percent: float = Field(
        default=1.0, gt=0, le=100, description="input checks' share of invoke time (adaptive)"
    )
    expected_input_range: tuple[float, float] | None = Field(
        default=None,
        description="the prepared input's range in training, e.g. [-1, 1]; default: from the model metadata",
    )
    input_tolerance: float = Field(default=0.25, ge=0, le=100, description="allowed excess, as a share of that range")
    max_abs_z: float = Field(
        default=8.0, gt=0, le=1e6, description="a feature this many training std from its mean is out of range"
    )
    on_input_nan: Literal["impute", "skip"] = "impute"
    on_input_out_of_range: Literal["warn", "skip"] = "warn"
    frozen_after: int = Field(
        default=50, ge=0, le=1_000_000_000, description="this many identical frames in a row: input_frozen (0: off)"
    )
    # escalation and recovery
    degrade_after: int = Field(
        default=5, ge=1, le=1_000_000_000, description="consecutive faulty frames that make the status degraded"
    )
    recover_after: int = Field(
        default=10, ge=1, le=1_000_000_000, description="consecutive good frames that bring it back online"
    )
    act_after: int = Field(
        default=50, ge=1, le=1_000_000_000, description="consecutive faulty frames that trigger on_persistent_fault"
    )
    on_persistent_fault: Literal["none", "reload", "fallback", "restart"] = "reload"
    event_interval_s: float = Field(
        default=10.0, ge=0, le=86400, description="repeats of one fault kind are merged into one event per interval"
    )

    @field_validator("expected_input_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and (not all(math.isfinite(x) for x in v) or v[0] >= v[1]):
            raise ValueError(f"must be [low, high] with finite low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _order(self) -> GuardConfig:
        if self.act_after < self.degrade_after:
            raise ValueError(
                f"guard.act_after ({self.act_after}) must be at least guard.degrade_after ({self.degrade_after})"
            )
        return self
