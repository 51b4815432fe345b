"""`[guard]`: the checks that keep garbage out of results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_agent.config._base import Section


class GuardConfig(Section):
    check_outputs: bool = True
    on_input_nan: Literal["impute", "skip"] = "impute"
    event_interval_s: float = Field(
        default=10.0, ge=0, le=86400, description="repeats of one fault kind are merged into one event per interval"
    )
