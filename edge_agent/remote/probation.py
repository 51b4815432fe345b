"""The first frames after a model update, watched with the previous model kept at hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.pipeline import Pipeline


@dataclass
class Probation:
    """Counts frames and faults of a newly swapped model; the old pipeline stays loaded (not
    closed) until `frame_limit` frames have passed with at most `fault_limit` faults."""

    version: int
    frame_limit: int
    fault_limit: int
    old_pipeline: Pipeline
    old_cfg: AgentConfig
    old_overlay: dict[str, Any] = field(default_factory=dict)
    frames: int = 0
    faults: int = 0
