"""Shared base for config sections: unknown keys are errors, values are immutable."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# A topic segment the agent builds into MQTT topics: no wildcards, no separators.
TOPIC_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
