"""`[remote]`: signed config and model updates over MQTT."""

from __future__ import annotations

from pydantic import Field, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import PathStr, TextStr

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
    hmac_key_file: PathStr | None = None
    allowed: tuple[TextStr, ...] = DEFAULT_ALLOWED
    model_dir: PathStr | None = Field(
        default=None, description="where remote model files live; default state_dir/models"
    )
    max_model_mb: float = Field(default=200.0, gt=0, le=4096, description="a larger model download is refused")
    download_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="per network operation of a download")
    probation_frames: int = Field(
        default=50, ge=1, le=100000, description="after a model update, watch this many frames for guard faults"
    )
    rollback_after_faults: int = Field(
        default=5, ge=1, le=100000, description="more faults than this during probation roll the model back"
    )

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
