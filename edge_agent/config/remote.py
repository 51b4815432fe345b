"""`[remote]`: signed config and model updates over MQTT."""

from __future__ import annotations

from pydantic import model_validator

from edge_agent.config._base import Section

# Never the broker, credentials, key files or remote.* themselves: an update must not be
# able to cut the device off its fleet or widen its own rights.
DEFAULT_ALLOWED = (
    "source",
    "model",
    "preprocess",
    "postprocess",
    "guard",
    "service.log_level",
    "service.stats_interval_s",
)


class RemoteConfig(Section):
    enabled: bool = False
    hmac_key_file: str | None = None
    allowed: tuple[str, ...] = DEFAULT_ALLOWED
    model_dir: str | None = None

    @model_validator(mode="after")
    def _key_needed(self) -> RemoteConfig:
        if self.enabled and not self.hmac_key_file:
            raise ValueError("remote.hmac_key_file: required when remote.enabled = true")
        bad = [
            k for k in self.allowed if k == "remote" or k.startswith("remote.") or k == "mqtt" or k.startswith("mqtt.")
        ]
        if bad:
            raise ValueError(f"remote.allowed: may not include the broker link or remote.* itself: {', '.join(bad)}")
        return self
