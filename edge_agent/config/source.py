"""`[source]`: where frames or sensor rows come from.

Users write one flat table (SPEC): `kind`, the keys every kind shares (`fps`, `max_frames`,
...), and each kind's own keys beside them (`path`, `wav_sample_rate`, `opencv_fourcc`, ...).
That flat shape is public: it is what `config/state` publishes, what a remote update's keys
name and what its overlay is merged onto. So `SourceConfig` keeps it, key for key, with each
key's type and default; nothing else about a kind's keys lives there.

Behind it each kind has its own frozen options model (`ImagesOptions`, `WavOptions`, ...):
its keys under their own names, their bounds and the rules between them. `SourceConfig.options`
is the chosen kind's, validated with the table, and it is all a source reads. A key of another
kind is refused unless it holds its default (a config dumped whole and read back, as a remote
overlay does, carries every key at its default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from edge_agent.config._base import Section
from edge_agent.config._types import MqttStr, PathStr, TextStr

# see SourceConfig.max_pixels
DEFAULT_MAX_PIXELS = 50_000_000

SourceKind = Literal["picamera2", "opencv", "images", "synthetic", "csv", "wav", "mqtt"]
# value types shared by the public table and the kind that owns the key
Pattern = Literal["noise", "gradient", "bars"]
WavScale = Literal["float", "int16"]
Picamera2Stream = Literal["main", "lores"]
ImagesAfter = Literal["keep", "delete", "move"]
Columns = tuple[TextStr, ...]
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def written_as(public: str, **constraints: Any) -> Any:
    """An option whose key in the `[source]` table is `public`: it is read, and its errors are
    reported, under that name."""
    return Field(validation_alias=public, **constraints)


def _public_key(name: str, field: FieldInfo) -> str:
    return field.validation_alias if isinstance(field.validation_alias, str) else name


class KindOptions(BaseModel):
    """One kind's keys, each given: the defaults are the public table's, so that they are stated
    once. Built from the table (by public key) or in code (by field name)."""

    # populate_by_name rather than validate_by_name: pydantic 2.5 (the oldest we take) has only it
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # fields the kind cannot do without (absent: None or empty), with what their error adds
    _required: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _required_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, hint in cls._required.items():
            public = _public_key(name, cls.model_fields[name])
            if data.get(public, data.get(name)) in (None, ""):
                raise ValueError(f"source.{public}: required when source.kind = {data.get('kind')!r}{hint}")
        return data

    @classmethod
    def public_keys(cls) -> tuple[str, ...]:
        """This kind's keys as the `[source]` table spells them."""
        return tuple(_public_key(n, f) for n, f in cls.model_fields.items() if n != "kind")


class Picamera2Options(KindOptions):
    """A Raspberry Pi camera through libcamera."""

    kind: Literal["picamera2"] = "picamera2"
    camera: int = written_as(
        "picamera2_camera", ge=0, le=15, description="camera index, as `rpicam-hello --list-cameras`"
    )
    stream: Picamera2Stream = written_as(
        "picamera2_stream", description="the stream the model reads; on a Pi 4 or older only 'main' delivers RGB"
    )
    size: tuple[int, int] | None = written_as(
        "picamera2_size",
        description="[width, height] of that stream; default: the model's input size when the ISP can resize the "
        "way the model was trained (center crop; stretch on a Pi 5), else 640 wide in the sensor's aspect ratio",
    )
    stall_frames: int = written_as(
        "picamera2_stall_frames",
        ge=2,
        le=10000,
        description="no frame for this many frame intervals (at least 2 s) is a stall",
    )

    @field_validator("size")
    @classmethod
    def _size_even(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and not all(2 <= v <= 8192 and v % 2 == 0 for v in size):
            raise ValueError(
                f"source.picamera2_size: width and height must be even numbers from 2 to 8192 "
                f"(picamera2 refuses odd sizes), got {list(size)}"
            )
        return size


class OpenCvOptions(KindOptions):
    """A V4L2 camera (`device`), a stream (`url`) or a video file (`path`), through OpenCV."""

    kind: Literal["opencv"] = "opencv"
    path: PathStr | None
    url: PathStr | None
    device: int | PathStr | None
    loop: bool = Field(description="a video file starts again at its end")
    open_timeout_s: float = written_as(
        "opencv_open_timeout_s", gt=0, le=600, description="a stream that has not answered by then is a failed open"
    )
    read_timeout_s: float = written_as(
        "opencv_read_timeout_s",
        gt=0,
        le=600,
        description="a stream or camera without a frame for this long has stalled",
    )
    capture_size: tuple[int, int] | None = written_as(
        "opencv_capture_size", description="[width, height] asked of a V4L2 device; default: the device's own"
    )
    capture_fps: float | None = written_as(
        "opencv_capture_fps", gt=0, le=1000, description="frame rate asked of a V4L2 device"
    )
    fourcc: str | None = written_as(
        "opencv_fourcc", pattern=r"^[ -~]{4}$", description='pixel format asked of a V4L2 device, e.g. "MJPG", "YUYV"'
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(URL_SCHEMES):
            raise ValueError(f"source.url: must start with rtsp://, rtsps://, http:// or https://, got {url!r}")
        return url

    @field_validator("device")
    @classmethod
    def _v4l2_device(cls, device: int | str | None) -> int | str | None:
        if isinstance(device, str) and not device.startswith("/"):
            raise ValueError(f"source.device: a V4L2 index (0) or an absolute path (/dev/video0), got {device!r}")
        if isinstance(device, int) and not 0 <= device <= 255:
            raise ValueError(f"source.device: a V4L2 index in 0..255, got {device}")
        return device

    @field_validator("capture_size")
    @classmethod
    def _capture_size(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and not all(1 <= v <= 8192 for v in size):
            raise ValueError(f"source.opencv_capture_size: [width, height] in 1..8192, got {list(size)}")
        return size

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if sum(x is not None for x in (self.path, self.url, self.device)) != 1:
            raise ValueError("source: kind 'opencv' needs exactly one of path, url or device")
        if self.device is None:
            for public, value in (
                ("opencv_capture_size", self.capture_size),
                ("opencv_capture_fps", self.capture_fps),
                ("opencv_fourcc", self.fourcc),
            ):
                if value is not None:
                    raise ValueError(
                        f"source.{public}: only applies to a V4L2 camera (source.kind = 'opencv' with device)"
                    )
        return self


class ImagesOptions(KindOptions):
    """Image files from a folder or glob, or a folder watched for new files."""

    _required: ClassVar[dict[str, str]] = {"path": ""}
    kind: Literal["images"] = "images"
    path: PathStr
    loop: bool = Field(description="start again at the first file after the last")
    watch: bool = written_as(
        "images_watch", description="after the files present at start, take new files as they appear in the folder"
    )
    after: ImagesAfter = written_as(
        "images_after", description="what happens to a watched file once taken (decoded or not)"
    )
    move_to: PathStr | None = written_as(
        "images_move_to", description="folder taken files go to with images_after = 'move'"
    )
    settle_s: float = written_as(
        "images_settle_s",
        gt=0,
        le=3600,
        description="a watched file without its end marker is taken (and reported) once unchanged this long",
    )

    @model_validator(mode="after")
    def _watching(self) -> Self:
        if self.watch and self.loop:
            raise ValueError("source.images_watch: a watched folder cannot also loop (set loop = false)")
        if self.after != "keep" and not self.watch:
            raise ValueError("source.images_after: only with images_watch = true")
        if (self.after == "move") != (self.move_to is not None):
            raise ValueError("source.images_move_to: needed with images_after = 'move', and only then")
        return self


class SyntheticOptions(KindOptions):
    """Generated frames: no camera needed."""

    kind: Literal["synthetic"] = "synthetic"
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    pattern: Pattern
    seed: int = Field(ge=0, le=2**64 - 1, description="noise pattern: the random generator's seed")


class CsvOptions(KindOptions):
    """Sensor rows from a CSV file with a header."""

    _required: ClassVar[dict[str, str]] = {"path": ""}
    kind: Literal["csv"] = "csv"
    path: PathStr
    loop: bool = Field(description="start again at the first row after the last")
    delimiter: str = Field(min_length=1, max_length=1)
    columns: Columns | None = Field(description="CSV columns to feed, in model order; default: the preprocess features")


class WavOptions(KindOptions):
    """Audio windows from WAV files."""

    _required: ClassVar[dict[str, str]] = {
        "path": "",
        "sample_rate": " (the model's rate, e.g. 48000)",
    }
    kind: Literal["wav"] = "wav"
    path: PathStr
    loop: bool = Field(description="start again at the first file after the last")
    sample_rate: int = written_as(
        "wav_sample_rate",
        ge=1000,
        le=384000,
        description="the model's sample rate (Hz); files at other rates are resampled",
    )
    window_s: float | None = written_as(
        "wav_window_s", gt=0, le=60, description="window length in seconds; default: the model's input length"
    )
    hop_s: float | None = written_as(
        "wav_hop_s", gt=0, le=3600, description="from one window's start to the next; default: the window (no overlap)"
    )
    scale: WavScale = written_as(
        "wav_scale", description='samples as the model takes them: "float" in [-1, 1], "int16" in [-32768, 32767]'
    )
    pad_last: bool = written_as(
        "wav_pad_last", description="zero-pad a file's last partial window instead of dropping it"
    )


class MqttOptions(KindOptions):
    """Sensor rows as JSON messages on a topic of the agent's broker."""

    _required: ClassVar[dict[str, str]] = {"topic": ""}
    kind: Literal["mqtt"] = "mqtt"
    topic: MqttStr
    columns: Columns | None = Field(description="feature names of a message's values; default: the features")
    queue: int = written_as(
        "mqtt_queue",
        ge=1,
        le=100_000,
        description="messages waiting for the model; beyond it the oldest are dropped",
    )
    qos: int = written_as("mqtt_qos", ge=0, le=2, description="QoS of the subscription to source.topic")

    @field_validator("topic")
    @classmethod
    def _topic_filter(cls, topic: str) -> str:
        segments = topic.split("/")
        # '+' must fill a whole level, '#' must be the whole last level (MQTT 4.7.1)
        misplaced = any(
            ("+" in seg and seg != "+") or ("#" in seg and (seg != "#" or i != len(segments) - 1))
            for i, seg in enumerate(segments)
        )
        if misplaced or "\x00" in topic:
            raise ValueError(f"source.topic: not a valid MQTT topic filter: {topic!r}")
        return topic


SourceOptions = Annotated[
    Picamera2Options | OpenCvOptions | ImagesOptions | SyntheticOptions | CsvOptions | WavOptions | MqttOptions,
    Field(discriminator="kind"),
]
OPTIONS_OF_KIND: dict[str, type[KindOptions]] = {
    options.model_fields["kind"].default: options
    for options in (
        Picamera2Options,
        OpenCvOptions,
        ImagesOptions,
        SyntheticOptions,
        CsvOptions,
        WavOptions,
        MqttOptions,
    )
}


def _kinds_of_key() -> dict[str, tuple[str, ...]]:
    kinds: dict[str, tuple[str, ...]] = {}
    for kind, options in OPTIONS_OF_KIND.items():
        for public in options.public_keys():
            kinds[public] = (*kinds.get(public, ()), kind)
    return kinds


# the kinds that read each kind-owned key of the table (`path`: opencv, images, csv, wav)
KINDS_OF_KEY = _kinds_of_key()


def _not_this_kinds(kind: str, owners: tuple[str, ...]) -> str:
    """`source.<key>: ` is put before it by the error's location."""
    which = f"kind {owners[0]!r}" if len(owners) == 1 else "kinds " + ", ".join(repr(k) for k in owners)
    return f"not a key of source.kind = {kind!r} (only for {which})"


class SourceConfig(Section):
    """The `[source]` table as written. Key order is the published order (config/state): keep it.
    The common keys carry their bounds here; every other key is a kind's, checked by its options."""

    # ---- common to every kind ----
    kind: SourceKind = "synthetic"
    fps: float | None = Field(default=None, gt=0, le=1000, description="upper limit on frames per second")
    # ---- kinds' keys: type and default; see *Options above for what they mean and their bounds ----
    path: PathStr | None = None
    url: PathStr | None = None
    device: int | PathStr | None = None
    loop: bool = False
    topic: MqttStr | None = None
    width: int = 640
    height: int = 480
    pattern: Pattern = "noise"
    seed: int = 0
    delimiter: str = ","
    columns: Columns | None = None
    # ---- common ----
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
    # the agent closes a source that failed (a dropped stream, a vanished camera or file) and
    # reopens it after 0.5 s, doubling the wait up to this limit until a frame comes again
    reconnect_max_s: float = Field(default=30.0, ge=0.5, le=3600, description="longest wait between two reopens")
    # ---- kinds' keys ----
    opencv_open_timeout_s: float = 10.0
    opencv_read_timeout_s: float = 5.0
    opencv_capture_size: tuple[int, int] | None = None
    opencv_capture_fps: float | None = None
    opencv_fourcc: str | None = None
    wav_sample_rate: int | None = None
    wav_window_s: float | None = None
    wav_hop_s: float | None = None
    wav_scale: WavScale = "float"
    wav_pad_last: bool = False
    picamera2_camera: int = 0
    picamera2_stream: Picamera2Stream = "main"
    picamera2_size: tuple[int, int] | None = None
    picamera2_stall_frames: int = 10
    images_watch: bool = False
    images_after: ImagesAfter = "keep"
    images_move_to: PathStr | None = None
    # ---- common: every image decoded (the images source, `edge-agent check` samples) ----
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
    # ---- kinds' keys ----
    images_settle_s: float = 2.0
    mqtt_queue: int = 100
    mqtt_qos: int = 0

    _options: SourceOptions | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _kind_options(self) -> Self:
        self._refuse_keys_of_other_kinds()
        self._options = self._validate_options()
        return self

    def _refuse_keys_of_other_kinds(self) -> None:
        foreign = [
            InitErrorDetails(
                type=PydanticCustomError("value_error", _not_this_kinds(self.kind, KINDS_OF_KEY[public])),
                loc=(public,),
                input=value,
            )
            for public, field in type(self).model_fields.items()
            if public in KINDS_OF_KEY
            and self.kind not in KINDS_OF_KEY[public]
            and (value := getattr(self, public)) != field.default
        ]
        if foreign:
            raise ValidationError.from_exception_data(type(self).__name__, foreign)

    def _validate_options(self) -> SourceOptions:
        options = OPTIONS_OF_KIND[self.kind]
        table = {public: getattr(self, public) for public in options.public_keys()}
        return cast("SourceOptions", options.model_validate({"kind": self.kind, **table}))

    @property
    def options(self) -> SourceOptions:
        """The chosen kind's options: what its source reads."""
        if self._options is None:  # built without validation (model_construct)
            self._options = self._validate_options()
        return self._options

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, validated as a new table (pydantic's own copy skips validation,
        which would leave `options` describing the old table)."""
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.model_dump(), **update})
