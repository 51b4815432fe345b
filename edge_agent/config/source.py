"""`[source]`: where frames or sensor rows come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config._base import Section

SourceKind = Literal["picamera2", "opencv", "images", "synthetic", "csv", "wav", "mqtt"]


class SourceConfig(Section):
    kind: SourceKind = "synthetic"
    fps: float | None = Field(default=None, gt=0, le=1000, description="upper limit on frames per second")
    path: str | None = None
    url: str | None = None
    device: int | str | None = None
    loop: bool = False
    topic: str | None = None
    # synthetic frames
    width: int = Field(default=640, ge=1, le=8192)
    height: int = Field(default=480, ge=1, le=8192)
    pattern: Literal["noise", "gradient", "bars"] = "noise"
    seed: int = 0
    # csv rows
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    columns: tuple[str, ...] | None = Field(
        default=None, description="CSV columns to feed, in model order; default: the preprocess features"
    )
    # a finite source (images without loop, csv) may stop the agent when exhausted: tests and
    # batch jobs want that, a daemon does not
    exit_when_done: bool = False
    max_frames: int | None = Field(default=None, ge=1, description="end the source after this many frames")
    stall_after_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="no frame for this long: source_stalled, the source is reopened (default: as the source kind says)",
    )

    @model_validator(mode="after")
    def _needs_location(self) -> SourceConfig:
        if self.kind in ("images", "csv", "wav") and not self.path:
            raise ValueError(f"source.path: required when source.kind = {self.kind!r}")
        if self.kind == "opencv" and sum(x is not None for x in (self.path, self.url, self.device)) != 1:
            raise ValueError("source: kind 'opencv' needs exactly one of path, url or device")
        if self.kind == "mqtt" and not self.topic:
            raise ValueError("source.topic: required when source.kind = 'mqtt'")
        if self.url is not None and not self.url.startswith(("rtsp://", "rtsps://", "http://", "https://")):
            raise ValueError(f"source.url: must start with rtsp://, rtsps://, http:// or https://, got {self.url!r}")
        return self
