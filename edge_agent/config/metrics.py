"""`[metrics]`: an optional Prometheus `/metrics` endpoint with the figures of the stats topic."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from edge_agent.config._base import Section


class MetricsConfig(Section):
    enabled: bool = Field(default=False, description="serve /metrics (needs the `metrics` extra: prometheus-client)")
    # the figures say what the device runs and how it fares: only this machine by default
    bind: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(default=9808, ge=1, le=65535)

    @field_validator("bind")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(
                f"must be an IP address such as 127.0.0.1 or :: (0.0.0.0: every interface), got {v!r}"
            ) from None
        return v
