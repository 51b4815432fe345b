"""Frame sources. `open_source` picks one by `source.kind` and hands it that kind's options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from edge_agent.config import MqttConfig, SourceConfig
from edge_agent.config.source import (
    CsvOptions,
    ImagesOptions,
    KindOptions,
    MqttOptions,
    OpenCvOptions,
    Picamera2Options,
    SyntheticOptions,
    WavOptions,
)
from edge_agent.errors import SourceError
from edge_agent.sources.base import NO_FRAME_YET, Frame, FrameSource, NoFrameYet, PixelOrder, SourceProblem

__all__ = ["NO_FRAME_YET", "Frame", "FrameSource", "NoFrameYet", "SourceProblem", "open_source"]

_Options = TypeVar("_Options", bound=KindOptions)


@dataclass(frozen=True)
class _Context:
    """What a source may need besides its own options: the section's common keys, what the
    model takes, and the agent's broker."""

    cfg: SourceConfig
    feature_names: tuple[str, ...]
    input_length: int | None
    model_size: tuple[int, int] | None
    model_order: PixelOrder | None
    model_resize: Literal["stretch", "letterbox", "center_crop"] | None
    broker: MqttConfig | None
    device_id: str

    def options(self, kind: type[_Options]) -> _Options:
        opts = self.cfg.options
        if not isinstance(opts, kind):  # the table below pairs each kind with its options
            raise SourceError(f"source.kind = {self.cfg.kind!r} has no {kind.__name__}")
        return opts


# Imports are local so that a Pi without, say, picamera2 can still use the others.
def _images(c: _Context) -> FrameSource:
    opts = c.options(ImagesOptions)
    if opts.watch:
        from edge_agent.sources.images_watch import WatchedFolderSource  # noqa: PLC0415

        return WatchedFolderSource(opts, max_pixels=c.cfg.max_pixels)
    from edge_agent.sources.images import ImageFolderSource  # noqa: PLC0415

    return ImageFolderSource(opts, max_pixels=c.cfg.max_pixels)


def _synthetic(c: _Context) -> FrameSource:
    from edge_agent.sources.synthetic import SyntheticSource  # noqa: PLC0415

    return SyntheticSource(c.options(SyntheticOptions))


def _csv(c: _Context) -> FrameSource:
    from edge_agent.sources.csv_rows import CsvRowSource  # noqa: PLC0415

    return CsvRowSource(c.options(CsvOptions), feature_names=c.feature_names)


def _opencv(c: _Context) -> FrameSource:
    from edge_agent.sources.opencv_source import OpenCvSource  # noqa: PLC0415

    return OpenCvSource(c.options(OpenCvOptions))


def _wav(c: _Context) -> FrameSource:
    from edge_agent.sources.wav_source import WavSource  # noqa: PLC0415

    return WavSource(c.options(WavOptions), input_length=c.input_length)


def _picamera2(c: _Context) -> FrameSource:
    from edge_agent.sources.picamera2_source import Picamera2Source  # noqa: PLC0415

    return Picamera2Source(
        c.options(Picamera2Options),
        fps=c.cfg.fps,
        model_size=c.model_size,
        model_order=c.model_order,
        model_resize=c.model_resize,
    )


def _mqtt(c: _Context) -> FrameSource:
    from edge_agent.sources.mqtt_source import MqttSensorSource  # noqa: PLC0415

    broker = c.broker or MqttConfig()
    client_id = f"{broker.client_id or f'edge-agent-{c.device_id}'}-source"
    return MqttSensorSource(c.options(MqttOptions), broker, client_id=client_id, feature_names=c.feature_names)


_OPENERS: dict[str, Callable[[_Context], FrameSource]] = {
    "images": _images,
    "synthetic": _synthetic,
    "csv": _csv,
    "opencv": _opencv,
    "wav": _wav,
    "picamera2": _picamera2,
    "mqtt": _mqtt,
}


def open_source(
    cfg: SourceConfig,
    *,
    feature_names: tuple[str, ...] = (),
    input_length: int | None = None,
    model_size: tuple[int, int] | None = None,
    model_order: PixelOrder | None = None,
    model_resize: Literal["stretch", "letterbox", "center_crop"] | None = None,
    broker: MqttConfig | None = None,
    device_id: str = "edge-agent",
) -> FrameSource:
    """What the model takes, when known (None: not known): `input_length` is how many values its
    input holds (the `wav` window, when `source.wav_window_s` does not say it); `model_size`
    (width, height), `model_order` and `model_resize` (preprocess.resize) describe an image input,
    so that a camera that can deliver frames that way (picamera2) is configured so, sparing
    preprocessing the work. `broker` and `device_id`: the agent's `[mqtt]` and `device.id`, for
    `kind = "mqtt"`."""
    opener = _OPENERS.get(cfg.kind)
    if opener is None:
        raise SourceError(f"source.kind = {cfg.kind!r} is not available in this version of edge-agent")
    context = _Context(cfg, feature_names, input_length, model_size, model_order, model_resize, broker, device_id)
    return opener(context)
