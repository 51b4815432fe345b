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
    # ---- picamera2 ----
    picamera2_camera: int = Field(default=0, ge=0, le=15, description="camera index, as `rpicam-hello --list-cameras`")
    picamera2_stream: Literal["main", "lores"] = Field(
        default="main", description="the stream the model reads; on a Pi 4 or older only 'main' delivers RGB"
    )
    picamera2_size: tuple[int, int] | None = Field(
        default=None,
        description="[width, height] of that stream; default: the model's input size when the ISP can resize the "
        "way the model was trained (center crop; stretch on a Pi 5), else 640 wide in the sensor's aspect ratio",
    )
    picamera2_stall_frames: int = Field(
        default=10, ge=2, le=10000, description="no frame for this many frame intervals (at least 2 s) is a stall"
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

    @model_validator(mode="after")
    def _picamera2_size_even(self) -> SourceConfig:
        size = self.picamera2_size
        if size is not None and not all(2 <= v <= 8192 and v % 2 == 0 for v in size):
            raise ValueError(
                f"source.picamera2_size: width and height must be even numbers from 2 to 8192 "
                f"(picamera2 refuses odd sizes), got {list(size)}"
            )
        return self
