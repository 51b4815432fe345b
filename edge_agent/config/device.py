"""`[device]`: who this agent is and where it keeps its state."""

from __future__ import annotations

import socket

from pydantic import Field, field_validator

from edge_agent.config._base import TOPIC_SEGMENT, Section
from edge_agent.config._types import PathStr

MAX_GROUPS = 100


def _hostname_id() -> str:
    # The hostname is the natural default on a fleet of Pis; it is sanitized so that it
    # is always a valid topic segment (hostnames may hold characters MQTT tooling dislikes).
    name = socket.gethostname().split(".")[0] or "edge"
    return "".join(c if TOPIC_SEGMENT.match(c) else "-" for c in name)[:64]


class DeviceConfig(Section):
    id: str = Field(default_factory=_hostname_id, description="device id used in topics")
    # each is a subscription on every connect: a handful in practice
    groups: tuple[str, ...] = Field(default=(), max_length=MAX_GROUPS)
    state_dir: PathStr = "/var/lib/edge-agent"

    @field_validator("id")
    @classmethod
    def _id_is_segment(cls, v: str) -> str:
        if not TOPIC_SEGMENT.match(v):
            raise ValueError(f"must be 1-64 characters of A-Z a-z 0-9 _ . - (no '/', '+', '#'), got {v!r}")
        return v

    @field_validator("groups")
    @classmethod
    def _groups_are_segments(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            if not TOPIC_SEGMENT.match(g):
                raise ValueError(f"group names must be 1-64 characters of A-Z a-z 0-9 _ . -, got {g!r}")
        if len(set(v)) != len(v):
            raise ValueError("group names must be unique")
        return v
