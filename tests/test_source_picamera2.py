"""The picamera2 source against a fake Picamera2 (tests/fake_picamera2.py), and on a real Pi camera when there is one.

There is no camera here. The fake follows picamera2's documented API and buffer semantics
(a fixed pool of buffers lent to the app until released, padded rows, "RGB888" = B,G,R in
memory, Job / wait(timeout) / cancel_all_and_flush, the exceptions for a missing or busy
camera). What only a Pi can verify is said in each test's docstring; in general: libcamera's
real timing and frontend timeouts, which sizes the ISP delivers exactly, its scaling and
color, dmabuf cache syncs, CMA limits, and picamera2's event loop thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from fake_picamera2 import PAD_BYTE, FakePicamera2, FakeWorld, gradient_scene
from mqtt_helpers import Collector
from pydantic import ValidationError

from edge_agent.broker import LocalBroker
from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError, SourceStalledError
from edge_agent.sources import Frame, open_source
from edge_agent.sources import picamera2_source as picam_module
from edge_agent.sources.base import MIN_LENT
from edge_agent.sources.picamera2_source import STALL_MIN_S, Picamera2Source, import_picamera2

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


def _source(world: FakeWorld, **cfg: object) -> Picamera2Source:
    model_size = cfg.pop("model_size", None)
    model_order = cfg.pop("model_order", None)
    model_resize = cfg.pop("model_resize", None)
    source = SourceConfig(kind="picamera2", **cfg)  # type: ignore[arg-type]
    return Picamera2Source(
        source.options,  # type: ignore[arg-type]
        fps=source.fps,
        model_size=model_size,  # type: ignore[arg-type]
        model_order=model_order,  # type: ignore[arg-type]
        model_resize=model_resize,  # type: ignore[arg-type]
        camera_factory=world.api,
    )


def _frame(src: Picamera2Source) -> Frame:
    item = src.read()
    assert isinstance(item, Frame), item
    return item


def _camera(world: FakeWorld) -> FakePicamera2:
    (cam,) = world.open_cameras
    return cam


def _buffer(cam: FakePicamera2, stream: str, slot: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(cam.buffers[stream][slot], dtype=np.uint8)


# ---- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(("model_order", "fmt", "order"), [(None, "RGB888", "bgr"), ("rgb", "BGR888", "rgb")])
def test_main_stream_at_the_model_size_in_the_model_byte_order(
    world: FakeWorld, model_order: str | None, fmt: str, order: str
) -> None:
    """The camera is asked for the model's size and the byte order it wants, so the frame needs no
    resize or conversion; the pixels are the scene's, in that order. Not verified here: that the
    ISP delivers this size exactly (libcamera may adjust it; the source then uses what it gets)."""
    src = _source(world, fps=15, model_size=(224, 160), model_order=model_order)
    cam = _camera(world)
    config = cam.camera_config
    assert config["main"]["format"] == fmt
    assert config["main"]["size"] == (224, 160)
    assert config["lores"] is None
    assert config["buffer_count"] >= MIN_LENT + 1
    assert config["queue"] is True  # the newest completed frame is ready without waiting
    assert cam.controls["FrameDurationLimits"] == (66667, 66667)  # the sensor runs at the agent's fps
    frame = _frame(src)
    assert frame.order == order
    assert frame.pixels is not None and frame.pixels.shape == (160, 224, 3)
    rgb = gradient_scene(0, 224, 160)
    assert np.array_equal(frame.pixels, rgb if order == "rgb" else rgb[..., ::-1])
    src.release(frame)
    src.close()


def test_size_rules(world: FakeWorld) -> None:
    """Odd model sizes are rounded up to even (picamera2 refuses odd ones); an explicit
    picamera2_size wins over the model's; without either, 640 wide in the sensor's aspect ratio
    (the fake's IMX708 is 16:9), so the ISP crops nothing."""
    for kw, want in [
        ({"model_size": (299, 299)}, (300, 300)),
        ({"model_size": (224, 224), "picamera2_size": (320, 240)}, (320, 240)),
        ({}, (640, 360)),
    ]:
        src = _source(world, **kw)
        assert _camera(world).camera_config["main"]["size"] == want
        assert src.size == want
        src.close()


@pytest.mark.parametrize(
    ("platform", "resize", "size", "preserve_ar"),
    [
        ("pisp", None, (224, 224), True),
        ("pisp", "center_crop", (224, 224), True),  # the ISP crops to the model's aspect ratio
        ("pisp", "stretch", (224, 224), False),  # the full field of view squeezed into it (ScalerCrops)
        ("vc4", "stretch", (640, 360), True),  # a Pi 4 cannot stretch: preprocessing does
        ("pisp", "letterbox", (640, 360), True),  # no ISP letterbox: preprocessing does
    ],
)
def test_the_isp_resizes_only_the_way_the_model_was_trained(
    platform: str, resize: str | None, size: tuple[int, int], preserve_ar: bool
) -> None:
    """The ISP's resize is a center crop (picamera2's preserve_ar, the default for main) or, on a
    Pi 5, a stretch of the full field of view; any other training transform is left to
    preprocessing, from a frame that keeps the sensor's aspect ratio. Not verified here: the
    crop the real ISP applies (the fake records preserve_ar, it does not crop)."""
    world = FakeWorld(platform=platform)
    src = _source(world, model_size=(224, 224), model_resize=resize)
    main = _camera(world).camera_config["main"]
    assert main["size"] == size and main["preserve_ar"] is preserve_ar
    src.close()


def test_lores_on_a_pi5_is_rgb_at_the_model_size(world: FakeWorld) -> None:
    """On a Pi 5 the lores stream can be RGB: it is configured at the model size, main (unused)
    as small YUV420 no smaller than lores. Not verified here: the PiSP's real lores scaler."""
    src = _source(world, picamera2_stream="lores", model_size=(300, 300))
    config = _camera(world).camera_config
    assert config["lores"]["format"] == "RGB888" and config["lores"]["size"] == (300, 300)
    assert config["main"]["format"] == "YUV420"
    assert config["main"]["size"][0] >= 300 and config["main"]["size"][1] >= 300
    frame = _frame(src)
    assert frame.pixels is not None
    assert np.array_equal(frame.pixels, gradient_scene(0, 300, 300)[..., ::-1])
    assert np.shares_memory(frame.pixels, _buffer(_camera(world), "lores", 0))
    src.release(frame)
    src.close()


def test_lores_on_a_pi4_is_a_one_line_error_naming_the_fix() -> None:
    """VC4 (Pi 4 and older) refuses an RGB lores stream ("lores stream must be YUV")."""
    world = FakeWorld(platform="vc4")
    with pytest.raises(SourceError) as err:
        _source(world, picamera2_stream="lores", model_size=(224, 224))
    msg = str(err.value)
    assert "\n" not in msg and "picamera2_stream = 'main'" in msg
    assert world.open_cameras == []  # the camera it had opened is closed again


def test_odd_picamera2_size_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match=r"picamera2_size: width and height must be even"):
        SourceConfig(kind="picamera2", picamera2_size=(225, 224))
    with pytest.raises(ValidationError, match="picamera2_stream"):
        SourceConfig(kind="picamera2", picamera2_stream="raw")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="picamera2_stall_frames"):
        SourceConfig(kind="picamera2", picamera2_stall_frames=1)


# ---- buffers: zero copy, stride, lending ---------------------------------------------------
def test_frames_are_views_of_the_camera_buffer_with_the_row_padding_skipped(world: FakeWorld) -> None:
    """A 100-pixel-wide RGB888 row is 300 bytes, padded to 320 in the buffer: the frame is a
    100-wide view into the buffer itself (no copy), and no padding byte is part of it. Not
    verified here: the real ISP's stride (the fake pads to 64 bytes as the Pi 5 does)."""
    src = _source(world, model_size=(100, 50))
    cam = _camera(world)
    assert cam.camera_config["main"]["stride"] == 320
    frame = _frame(src)
    px = frame.pixels
    assert px is not None and px.shape == (50, 100, 3)
    assert px.strides == (320, 3, 1)
    assert np.shares_memory(px, _buffer(cam, "main", 0))
    assert not np.any(np.all(px == PAD_BYTE, axis=2))
    assert not px.flags.writeable  # the memory is the camera's
    src.release(frame)
    del frame, px
    src.close()
    assert cam.leaked_maps == 0


def test_a_held_frame_stays_intact_while_the_next_ones_are_captured(world: FakeWorld) -> None:
    """Lent frames keep their buffer: MIN_LENT frames held at once all keep their own pixels."""
    src = _source(world, model_size=(64, 48))
    held = [_frame(src) for _ in range(MIN_LENT)]
    for n, frame in enumerate(held):
        assert frame.pixels is not None
        assert np.array_equal(frame.pixels, gradient_scene(n, 64, 48)[..., ::-1])
    assert len({f.pixels.__array_interface__["data"][0] for f in held if f.pixels is not None}) == MIN_LENT
    for frame in held:
        src.release(frame)
    del held, frame
    src.close()


def test_a_thousand_frames_with_three_held_never_exhaust_the_pool(world: FakeWorld) -> None:
    """Requests go back on release(), so a long run with MIN_LENT frames held never starves the
    camera; close() then leaves nothing lent and nothing mapped. Not verified here: CMA use on
    a Pi (the fake's buffers are anonymous mmaps)."""
    src = _source(world, model_size=(64, 48))
    cam = _camera(world)
    held: list[Frame] = []
    for _ in range(1000):
        held.append(_frame(src))
        if len(held) == MIN_LENT:
            src.release(held.pop(0))
    assert cam.frames == 1000
    assert cam.max_lent == MIN_LENT
    for frame in held:
        src.release(frame)
    assert cam.lent == set()
    del held, frame
    src.close()
    assert not cam.is_open and cam.leaked_maps == 0


def test_release_is_idempotent_and_close_gives_back_what_is_still_lent(world: FakeWorld) -> None:
    src = _source(world, model_size=(32, 32))
    cam = _camera(world)
    a, b = _frame(src), _frame(src)
    src.release(a)
    src.release(a)  # twice: nothing more to give back
    assert len(cam.lent) == 1
    src.close()
    assert cam.lent == set() and not cam.is_open
    src.release(b)  # after close: a no-op
    with pytest.raises(SourceError, match="closed"):
        src.read()
    src.close()  # twice: fine


def test_a_caller_that_never_releases_sees_a_stall_not_a_hang(world: FakeWorld) -> None:
    """The leak behind CMA exhaustion on a Pi (requests never released): once the camera has no
    free buffer no request completes, and read() reports it as a stall within the stall time."""
    src = _source(world, model_size=(32, 32), fps=30)
    kept = []
    with pytest.raises(SourceStalledError):
        for _ in range(20):
            kept.append(_frame(src))
    assert len(kept) == 6 - 1  # buffer_count 6, one held back by picamera2's queue
    src.close()


# ---- stalls ---------------------------------------------------------------------------------
def test_a_frozen_camera_raises_source_stalled_within_the_stall_time(world: FakeWorld) -> None:
    """No frame for `picamera2_stall_frames` intervals (at least STALL_MIN_S) → SourceStalledError
    with a one-line message; the timed-out capture is cancelled, so closing and opening again
    delivers frames. Not verified here: that a real frontend timeout ("Camera frontend has timed
    out!") looks like this to picamera2 (a request that never completes), and that stop()/close()
    return on a wedged camera."""
    src = _source(world, model_size=(32, 32), fps=30, picamera2_stall_frames=10)
    assert src.stall_s == STALL_MIN_S  # 10 frames at 30 fps is less than the floor
    src.release(_frame(src))
    world.freeze()
    t0 = time.monotonic()
    with pytest.raises(SourceStalledError) as err:
        src.read()
    waited = time.monotonic() - t0
    assert STALL_MIN_S - 0.05 <= waited < STALL_MIN_S + 3.0
    assert "\n" not in str(err.value) and "no frame for 2.0 s" in str(err.value)
    cam = _camera(world)
    assert cam.jobs == []  # cancelled: it will not swallow a later frame
    src.close()
    again = _source(world, model_size=(32, 32), fps=30)
    again.release(_frame(again))
    again.close()


def test_stall_time_follows_the_frame_rate(world: FakeWorld) -> None:
    """At 2 fps, 10 frame intervals are 5 s: a slow camera is not declared stalled early."""
    src = _source(world, model_size=(32, 32), fps=2, picamera2_stall_frames=10)
    assert src.frame_us == 500000
    assert src.stall_s == pytest.approx(5.0)
    src.close()


def test_a_short_hiccup_is_not_a_stall(world: FakeWorld) -> None:
    """A freeze shorter than the stall time only delays the next frame."""
    src = _source(world, model_size=(32, 32), fps=30)
    src.release(_frame(src))
    world.freeze(0.3)
    frame = _frame(src)
    src.release(frame)
    src.close()


# ---- opening --------------------------------------------------------------------------------
def test_no_camera_is_a_one_line_source_error() -> None:
    world = FakeWorld(cameras=[])
    with pytest.raises(SourceError) as err:
        _source(world)
    assert "\n" not in str(err.value) and "no camera 0 found" in str(err.value)
    with pytest.raises(IndexError):  # what picamera2 itself raises, which the source translates
        world.api().camera_class(0)


def test_a_camera_index_beyond_the_connected_ones_says_how_many_there_are(world: FakeWorld) -> None:
    with pytest.raises(SourceError, match=r"picamera2_camera = 1, but only 1 camera\(s\) are connected"):
        _source(world, picamera2_camera=1)


def test_a_busy_camera_is_a_one_line_source_error(world: FakeWorld) -> None:
    """Another process holds the camera (picamera2 wraps libcamera's "Failed to acquire camera:
    Device or resource busy" in "Camera __init__ sequence did not complete.")."""
    world.held_elsewhere.add(0)
    with pytest.raises(SourceError) as err:
        _source(world)
    msg = str(err.value)
    assert "\n" not in msg and "in use by another process" in msg and "Device or resource busy" in msg
    world.held_elsewhere.clear()
    first = _source(world)  # and within this process: a second open of the same camera
    with pytest.raises(SourceError, match="in use by another process"):
        _source(world)
    first.close()
    _source(world).close()  # free again once closed


def test_without_picamera2_installed_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 → ImportError
    with pytest.raises(SourceError) as err:
        import_picamera2()
    msg = str(err.value)
    assert "\n" not in msg
    assert "sudo apt install python3-picamera2" in msg and "--system-site-packages" in msg
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source(SourceConfig(kind="picamera2"))


def test_open_source_passes_the_model_input_through(world: FakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picam_module, "import_picamera2", world.api)
    src = open_source(SourceConfig(kind="picamera2"), model_size=(96, 64), model_order="rgb")
    assert isinstance(src, Picamera2Source)
    assert _camera(world).camera_config["main"]["format"] == "BGR888"
    assert src.name == "picamera2:0:main:96x64"
    src.close()


# ---- the real agent ---------------------------------------------------------------------------
def _digit_scene(bundled: Path, digit: int) -> object:
    images = [
        cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        for p in sorted((bundled / "digits_frames").glob(f"*_{digit}.png"))
    ]
    assert images

    def scene(n: int, w: int, h: int) -> npt.NDArray[np.uint8]:
        img = images[n % len(images)]
        return img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h))

    return scene


@pytest.fixture
def agent_world(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorld]:
    world = FakeWorld()
    world.scene = _digit_scene(bundled, 3)  # type: ignore[assignment]
    monkeypatch.setattr(picam_module, "import_picamera2", world.api)
    yield world


def test_agent_reports_a_frozen_camera_reopens_it_and_results_resume(
    agent_world: FakeWorld, tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """The real agent, broker and digits model, reading a fake camera that shows the digit 3
    through padded 32x32 RGB888 buffers. The camera freezes mid-run for good (as after a
    frontend timeout): the agent publishes `source_stalled`, closes the camera (every request
    released, no buffer still mapped by a view kept past release), opens it again, and results resume. Not verified here: a real camera's recovery
    after close/reopen (on a Pi a frontend timeout may need more than a reopen)."""
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.config import parse_config  # noqa: PLC0415

    cfg = parse_config(
        {
            "device": {"id": device, "state_dir": str(tmp_path / "state")},
            "source": {"kind": "picamera2", "fps": 20, "picamera2_size": [32, 32], "picamera2_stall_frames": 10},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
            },
            "preprocess": {
                "resize": "stretch",
                "color": "rgb",
                "scale": 1 / 255,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
            },
            "postprocess": {"top_k": 1},
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "topic_prefix": "edge"},
        }
    )
    agent = Agent(cfg)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    try:
        col.wait_for(lambda m: m.leaf == "results", 20, "a first result")
        col.wait_for(lambda m: m.leaf == "results" and m.payload["seq"] >= 10, 20, "ten results")
        first = agent_world.instances[0]
        assert first.camera_config["main"]["stride"] == 128  # 96-byte rows padded: the strided path is used
        agent_world.freeze()
        mark = col.mark()
        stalled = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "source_stalled", 15, "source_stalled", start=mark
        )
        assert stalled.payload["severity"] == "error"
        assert "no frame for" in stalled.payload["message"]
        after = col.mark()
        col.wait_for(lambda m: m.leaf == "results", 15, "results after the reopen", start=after)
        col.wait_for(
            lambda m: m.leaf == "results" and m.payload["frame"]["seq"] >= 10,
            15,
            "ten frames from the new camera",
            start=after,
        )
    finally:
        agent.stop()
        thread.join(15)
    assert not thread.is_alive(), "the agent did not stop"
    assert len(agent_world.instances) >= 2
    assert not first.is_open and first.lent == set()
    results = col.on("results")
    correct = sum(1 for r in results if r["top"][0]["index"] == 3)
    assert correct >= 0.9 * len(results), f"{correct}/{len(results)} frames of a 3 read as 3"
    assert all(r["frame"]["source"] == "picamera2:0" for r in results)
    assert not any(c.is_open for c in agent_world.instances)  # closed on shutdown too
    # no view of a camera buffer outlived its release (else picamera2 could not unmap it on close)
    assert [c.leaked_maps for c in agent_world.instances] == [0] * len(agent_world.instances)


# ---- a real camera ----------------------------------------------------------------------------
@pytest.mark.device
def test_real_camera_delivers_zero_copy_frames_at_the_model_size() -> None:
    """On a Pi with a camera: frames at the model's size, views of the camera's buffers, a
    thousand of them with MIN_LENT held without starving the camera."""
    try:
        import picamera2  # noqa: PLC0415
    except Exception as err:
        pytest.skip(f"needs a Raspberry Pi with picamera2 and a camera (picamera2 is not importable: {err})")
    if not picamera2.Picamera2.global_camera_info():
        pytest.skip("picamera2 is installed but libcamera finds no camera")
    logging.getLogger("picamera2").setLevel(logging.WARNING)
    src = Picamera2Source(SourceConfig(kind="picamera2").options, fps=30, model_size=(224, 224))  # type: ignore[arg-type]
    try:
        held: list[Frame] = []
        t0 = time.monotonic()
        for _ in range(300):
            frame = _frame(src)
            assert frame.pixels is not None and frame.pixels.shape[2] == 3
            assert not frame.pixels.flags.owndata  # a view of the camera's buffer
            held.append(frame)
            if len(held) == MIN_LENT:
                src.release(held.pop(0))
        for frame in held:
            src.release(frame)
        logging.getLogger(__name__).info("300 frames in %.1f s at %s", time.monotonic() - t0, src.size)
    finally:
        src.close()
