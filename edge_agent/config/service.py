"""`[service]`: logging, stats and the systemd watchdog."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge_agent.config._base import Section


class ServiceConfig(Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stats_interval_s: float = Field(default=30.0, ge=1, le=86400)
    watchdog: bool = True
    snapshot_max_kb: int = Field(
        default=256, ge=1, le=65536, description="a snapshot JPEG is made to fit (quality, then size) under this"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v
