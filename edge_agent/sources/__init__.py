"""Frame sources. `open_source` picks one by `source.kind`."""

from __future__ import annotations

from typing import Literal

from edge_agent.config import MqttConfig, SourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.base import NO_FRAME_YET, Frame, FrameSource, NoFrameYet, PixelOrder, SourceProblem

__all__ = ["NO_FRAME_YET", "Frame", "FrameSource", "NoFrameYet", "SourceProblem", "open_source"]


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
    # imports are local so that a Pi without, say, picamera2 can still use the others
    if cfg.kind == "images" and cfg.images_watch:
        from edge_agent.sources.images_watch import WatchedFolderSource  # noqa: PLC0415

        return WatchedFolderSource(cfg)
    if cfg.kind == "images":
        from edge_agent.sources.images import ImageFolderSource  # noqa: PLC0415

        return ImageFolderSource(cfg)
    if cfg.kind == "synthetic":
        from edge_agent.sources.synthetic import SyntheticSource  # noqa: PLC0415

        return SyntheticSource(cfg)
    if cfg.kind == "csv":
        from edge_agent.sources.csv_rows import CsvRowSource  # noqa: PLC0415

        return CsvRowSource(cfg, feature_names=feature_names)
    if cfg.kind == "opencv":
        from edge_agent.sources.opencv_source import OpenCvSource  # noqa: PLC0415

        return OpenCvSource(cfg)
    if cfg.kind == "wav":
        from edge_agent.sources.wav_source import WavSource  # noqa: PLC0415

        return WavSource(cfg, input_length=input_length)
    if cfg.kind == "picamera2":
        from edge_agent.sources.picamera2_source import Picamera2Source  # noqa: PLC0415

        return Picamera2Source(cfg, model_size=model_size, model_order=model_order, model_resize=model_resize)
    if cfg.kind == "mqtt":
        from edge_agent.sources.mqtt_source import MqttSensorSource  # noqa: PLC0415

        broker = broker or MqttConfig()
        client_id = f"{broker.client_id or f'edge-agent-{device_id}'}-source"
        return MqttSensorSource(cfg, broker, client_id=client_id, feature_names=feature_names)
    raise SourceError(f"source.kind = {cfg.kind!r} is not available in this version of edge-agent")
