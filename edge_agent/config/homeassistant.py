"""`[homeassistant]`: MQTT discovery, so that Home Assistant shows the device by itself."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from edge_agent.config._base import Section
from edge_agent.config._types import TextStr

# Home Assistant subscribes to `<prefix>/#`: the prefix is a topic of plain segments
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


class HomeAssistantConfig(Section):
    enabled: bool = Field(default=False, description="publish retained discovery configs on every connect")
    discovery_prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix")
    name: TextStr | None = Field(default=None, description="the device's name in Home Assistant (default: device.id)")

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.match(v):
            raise ValueError(
                f"must be a topic of segments of A-Z a-z 0-9 _ - without wildcards or leading/trailing '/', got {v!r}"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank (leave it out to use device.id)")
        return v
