"""`[source]`: where frames or sensor rows come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import MqttStr, PathStr, TextStr

# see SourceConfig.max_pixels
DEFAULT_MAX_PIXELS = 50_000_000

SourceKind = Literal["picamera2", "opencv", "images", "synthetic", "csv", "wav", "mqtt"]


class SourceConfig(Section):
    kind: SourceKind = "synthetic"
    fps: float | None = Field(default=None, gt=0, le=1000, description="upper limit on frames per second")
    path: PathStr | None = None
    url: PathStr | None = None
    device: int | PathStr | None = None
    loop: bool = False
    topic: MqttStr | None = None
    # synthetic frames
    width: int = Field(default=640, ge=1, le=8192)
    height: int = Field(default=480, ge=1, le=8192)
    pattern: Literal["noise", "gradient", "bars"] = "noise"
    seed: int = Field(default=0, ge=0, le=2**64 - 1, description="noise pattern: the random generator's seed")
    # csv rows
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    columns: tuple[TextStr, ...] | None = Field(
        default=None, description="CSV columns to feed, in model order; default: the preprocess features"
    )
    # a finite source (images without loop, csv) may stop the agent when exhausted: tests and
    # batch jobs want that, a daemon does not
    exit_when_done: bool = False
    max_frames: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="end the source after this many frames"
    )
    stall_after_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="no frame for this long: source_stalled, the source is reopened (default: as the source kind says)",
    )
    # ---- opencv ----
    # the agent closes a source that failed (a dropped stream, a vanished camera or file) and
    # reopens it after 0.5 s, doubling the wait up to this limit until a frame comes again
    reconnect_max_s: float = Field(default=30.0, ge=0.5, le=3600, description="longest wait between two reopens")
    opencv_open_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="a stream that has not answered by then is a failed open"
    )
    opencv_read_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="a stream or camera without a frame for this long has stalled"
    )
    opencv_capture_size: tuple[int, int] | None = Field(
        default=None, description="[width, height] asked of a V4L2 device; default: the device's own"
    )
    opencv_capture_fps: float | None = Field(
        default=None, gt=0, le=1000, description="frame rate asked of a V4L2 device"
    )
    opencv_fourcc: str | None = Field(
        default=None, pattern=r"^[ -~]{4}$", description='pixel format asked of a V4L2 device, e.g. "MJPG", "YUYV"'
    )
    # ---- wav ----
    wav_sample_rate: int | None = Field(
        default=None, ge=1000, le=384000, description="the model's sample rate (Hz); files at other rates are resampled"
    )
    wav_window_s: float | None = Field(
        default=None, gt=0, le=60, description="window length in seconds; default: the model's input length"
    )
    wav_hop_s: float | None = Field(
        default=None, gt=0, le=3600, description="from one window's start to the next; default: the window (no overlap)"
    )
    wav_scale: Literal["float", "int16"] = Field(
        default="float", description='samples as the model takes them: "float" in [-1, 1], "int16" in [-32768, 32767]'
    )
    wav_pad_last: bool = Field(
        default=False, description="zero-pad a file's last partial window instead of dropping it"
    )
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
    # ---- images ----
    images_watch: bool = Field(
        default=False, description="after the files present at start, take new files as they appear in the folder"
    )
    images_after: Literal["keep", "delete", "move"] = Field(
        default="keep", description="what happens to a watched file once taken (decoded or not)"
    )
    images_move_to: PathStr | None = Field(
        default=None, description="folder taken files go to with images_after = 'move'"
    )
    # A decoder allocates what an image's header claims (a 74-byte PNG can claim 10 gigapixels),
    # so the size is read from the header and checked before decoding. 50 MP is above every Pi
    # camera's still (HQ 12.3 MP, Camera Module 3 11.9 MP) and most phone photos (12-48 MP);
    # decoded, a 50 MP image is 150 MB of BGR, which a 1 GB Pi holds. Raise it for a 64 MP sensor.
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        le=1 << 30,  # OpenCV's own hard limit (CV_IO_MAX_IMAGE_PIXELS)
        description="an image file whose header declares more pixels (width × height) is skipped, not decoded",
    )
    images_settle_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="a watched file without its end marker is taken (and reported) once unchanged this long",
    )
    # ---- mqtt ----
    mqtt_queue: int = Field(
        default=100, ge=1, le=100_000, description="messages waiting for the model; beyond it the oldest are dropped"
    )
    mqtt_qos: int = Field(default=0, ge=0, le=2, description="QoS of the subscription to source.topic")

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
    def _opencv_options(self) -> SourceConfig:
        if self.opencv_capture_size is not None and not all(1 <= v <= 8192 for v in self.opencv_capture_size):
            raise ValueError(
                f"source.opencv_capture_size: [width, height] in 1..8192, got {list(self.opencv_capture_size)}"
            )
        device_only = ("opencv_capture_size", "opencv_capture_fps", "opencv_fourcc")
        for key in device_only:
            if getattr(self, key) is not None and (self.kind != "opencv" or self.device is None):
                raise ValueError(f"source.{key}: only applies to a V4L2 camera (source.kind = 'opencv' with device)")
        if self.kind != "opencv":
            return self
        if isinstance(self.device, str) and not self.device.startswith("/"):
            raise ValueError(f"source.device: a V4L2 index (0) or an absolute path (/dev/video0), got {self.device!r}")
        if isinstance(self.device, int) and not 0 <= self.device <= 255:
            raise ValueError(f"source.device: a V4L2 index in 0..255, got {self.device}")
        return self

    @model_validator(mode="after")
    def _wav_rate(self) -> SourceConfig:
        if self.kind == "wav" and self.wav_sample_rate is None:
            raise ValueError("source.wav_sample_rate: required when source.kind = 'wav' (the model's rate, e.g. 48000)")
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

    @model_validator(mode="after")
    def _images_watch(self) -> SourceConfig:
        if self.images_watch and self.kind != "images":
            raise ValueError("source.images_watch: only for source.kind = 'images'")
        if self.images_watch and self.loop:
            raise ValueError("source.images_watch: a watched folder cannot also loop (set loop = false)")
        if self.images_after != "keep" and not self.images_watch:
            raise ValueError("source.images_after: only with images_watch = true")
        if (self.images_after == "move") != (self.images_move_to is not None):
            raise ValueError("source.images_move_to: needed with images_after = 'move', and only then")
        return self

    @model_validator(mode="after")
    def _mqtt_topic(self) -> SourceConfig:
        if self.kind == "mqtt" and self.topic is not None:
            segments = self.topic.split("/")
            # '+' must fill a whole level, '#' must be the whole last level (MQTT 4.7.1)
            misplaced = any(
                ("+" in seg and seg != "+") or ("#" in seg and (seg != "#" or i != len(segments) - 1))
                for i, seg in enumerate(segments)
            )
            if misplaced or "\x00" in self.topic:
                raise ValueError(f"source.topic: not a valid MQTT topic filter: {self.topic!r}")
        return self
