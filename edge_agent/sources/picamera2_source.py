"""`picamera2`: frames from a Raspberry Pi camera, read in place from the camera's own buffers.

The stream the model reads is configured at the model's input size (the ISP resizes for
free) and in the byte order the model wants, so a frame reaches preprocessing with no copy,
no resize and no color conversion. Each frame is a view of a completed request's buffer:
the request stays out of the camera's pool until `release(frame)` (buffers are lent, see
`base.FrameSource`), and `buffer_count` leaves the camera enough buffers while the agent
holds `MIN_LENT` frames. A camera that stops delivering (libcamera's "Camera frontend has
timed out!" / "Dequeue timer ... has expired!": the request simply never completes) raises
`SourceStalledError`; the agent closes the source and opens it again later.

picamera2 is imported only when a camera is opened, so this module imports anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from edge_agent.config.source import Picamera2Options
from edge_agent.errors import SourceError, SourceStalledError
from edge_agent.sources.base import MIN_LENT, Frame, PixelOrder, SourceProblem, Stamp, frame_from_pixels

log = logging.getLogger(__name__)

# when the model's size is not used: 640 wide in the sensor's aspect ratio (this without a sensor size)
DEFAULT_SIZE = (640, 480)
# lent frames + the newest completed request picamera2 keeps back (queue=True) + two queued
# with the camera, so that holding MIN_LENT frames never leaves the sensor without a buffer
BUFFER_COUNT = MIN_LENT + 3
# a stall is `picamera2_stall_frames` intervals, but never less than this: exposure changes and
# a loaded CPU delay single frames; a frozen frontend stays frozen
STALL_MIN_S = 2.0
# the first frame after start also waits for the sensor to stream and for picamera2 to drop
# its startup frames
FIRST_FRAME_MIN_S = 5.0
# create_video_configuration's own default: 30 fps
DEFAULT_FRAME_US = 33333
# Picamera2's format names are libcamera's (DRM fourcc) names, so they read backwards:
# "RGB888" is B,G,R in memory (OpenCV's BGR), "BGR888" is R,G,B.
FORMAT_FOR_ORDER: dict[str, str] = {"bgr": "RGB888", "rgb": "BGR888"}
INSTALL_HINT = (
    "install it with `sudo apt install python3-picamera2` (libcamera's Python bindings come only from apt) "
    "and create the venv with --system-site-packages so that it sees them"
)


@dataclass(frozen=True)
class Picamera2Api:
    """The two names of the picamera2 package this source uses (a fake stands in for tests)."""

    camera_class: Any  # picamera2.Picamera2: called with the camera number; has global_camera_info()
    mapped_array: Any  # picamera2.MappedArray(request, stream, reshape=...): a no-copy view, by scope


def import_picamera2() -> Picamera2Api:
    """The real picamera2, or a one-line SourceError saying how to install it."""
    try:
        import picamera2  # noqa: PLC0415  (only here: machines without a camera never import it)
    except Exception as err:  # noqa: BLE001  (ImportError, or a NumPy ABI mismatch in its dependencies)
        raise SourceError(f"picamera2 cannot be imported ({_first_line(err)}): {INSTALL_HINT}") from None
    return Picamera2Api(camera_class=picamera2.Picamera2, mapped_array=picamera2.MappedArray)


ModelResize = Literal["stretch", "letterbox", "center_crop"]


@dataclass(frozen=True)
class StreamPlan:
    """What to ask the camera for, decided from the config, the model and the sensor."""

    stream: Literal["main", "lores"]
    size: tuple[int, int]  # width, height of the stream the model reads
    fmt: str  # picamera2 format name
    order: Literal["bgr", "rgb"]  # the order of its bytes in memory
    # picamera2's stream key: True crops the sensor image to the output's aspect ratio (a center
    # crop), False scales the full field of view into it (a stretch; Pi 5 only)
    preserve_ar: bool = True
    main_size: tuple[int, int] | None = None  # with stream = "lores": the main stream, which must not be smaller


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """picamera2 refuses odd widths and heights: round up (preprocessing resizes the last pixel away)."""
    w, h = size
    return (w + w % 2, h + h % 2)


def sensor_aspect_size(sensor: tuple[int, int] | None, at_least: tuple[int, int]) -> tuple[int, int]:
    """The smallest size in the sensor's aspect ratio (so the ISP crops nothing) that is at least
    `at_least`: with (640, 2), 640x360 for a 16:9 sensor and 640x480 for a 4:3 one."""
    if sensor is None or min(sensor) <= 0:
        return even_size((max(at_least[0], DEFAULT_SIZE[0]), max(at_least[1], DEFAULT_SIZE[1])))
    sw, sh = sensor
    w = max(at_least[0], -(-at_least[1] * sw // sh))
    return even_size((w, max(round(w * sh / sw), at_least[1], 2)))


def plan_stream(
    opts: Picamera2Options,
    *,
    model_size: tuple[int, int] | None,
    model_order: PixelOrder | None,
    model_resize: ModelResize | None = None,
    sensor_size: tuple[int, int] | None = None,
    can_stretch: bool = False,
) -> StreamPlan:
    """The ISP resizes for free, but only as a center crop (picamera2's default for main) or, on
    a Pi 5 (ScalerCrops), as a stretch of the full field of view. So the stream is at the model's
    size only when that is the model's own resize; otherwise it keeps the sensor's aspect ratio
    and preprocessing does the training transform (a letterbox, say) exactly."""
    order: Literal["bgr", "rgb"] = "rgb" if model_order == "rgb" else "bgr"  # gray models: the plan converts
    fmt = FORMAT_FOR_ORDER[order]
    isp_can = model_resize in (None, "center_crop") or (model_resize == "stretch" and can_stretch)
    preserve_ar = True
    if opts.size is not None:  # an explicit size wins
        size = opts.size
    elif model_size is not None and min(model_size) >= 1 and isp_can:
        size = even_size(model_size)
        preserve_ar = model_resize != "stretch"
    else:
        size = sensor_aspect_size(sensor_size, (DEFAULT_SIZE[0], 2))
    if opts.stream == "main":
        return StreamPlan("main", size, fmt, order, preserve_ar)
    # lores is scaled from main's crop and may not be larger than main: main (YUV420, the cheapest
    # format, read by nothing here) keeps the sensor's aspect ratio, so a stretch is a stretch of
    # the full field of view; a center crop is asked of the lores stream itself
    main = sensor_aspect_size(sensor_size, (max(size[0], DEFAULT_SIZE[0]), size[1]))
    return StreamPlan("lores", size, fmt, order, preserve_ar, main_size=main)


def frame_interval_us(fps: float | None, limits: Any) -> int:
    """The frame duration to ask for: the agent's fps limit (so the sensor does not work for
    frames nobody reads), within the camera's FrameDurationLimits (min, max, default) in µs."""
    want = round(1e6 / fps) if fps else DEFAULT_FRAME_US
    if isinstance(limits, tuple | list) and len(limits) >= 2:
        lo, hi = limits[0], limits[1]
        if isinstance(lo, int | float) and isinstance(hi, int | float) and 0 < lo <= hi:
            want = min(max(want, int(lo)), int(hi))
    return want


def frame_view(buf: npt.NDArray[np.uint8], size: tuple[int, int], stride: int) -> npt.NDArray[np.uint8]:
    """The H×W×3 image inside a camera buffer whose rows are `stride` bytes apart (the ISP pads
    rows to 32 or 64 bytes): a view, never a copy; the padding bytes are skipped, not removed."""
    w, h = size
    if stride < w * 3 or buf.size < (h - 1) * stride + w * 3:
        raise SourceError(f"camera buffer of {buf.size} bytes, stride {stride}, cannot hold {w}x{h} RGB")
    # read-only: the memory belongs to the camera and goes back to it on release
    return as_strided(buf, shape=(h, w, 3), strides=(stride, 3, 1), writeable=False)


class Picamera2Source:
    def __init__(
        self,
        opts: Picamera2Options,
        *,
        fps: float | None = None,
        model_size: tuple[int, int] | None = None,
        model_order: PixelOrder | None = None,
        model_resize: ModelResize | None = None,
        camera_factory: Callable[[], Picamera2Api] | None = None,
    ) -> None:
        """`fps`: the agent's `source.fps` (the camera is asked for no more frames than that);
        `model_size` (width, height), `model_order` and `model_resize` describe the model's input
        and training transform (None: not known); the camera delivers frames that way when it can."""
        self._api = (camera_factory or import_picamera2)()
        self.live = True  # the agent takes the newest frame (read in a capture thread)
        self._num = opts.camera
        self._fps = fps
        self._stall_frames = opts.stall_frames
        self._stamp = Stamp()
        self._lent: dict[int, ExitStack] = {}
        self._delivered = 0
        self._cam: Any = _open_camera(self._api, self._num)
        try:
            sensor = getattr(self._cam, "sensor_resolution", None)
            self.plan = plan_stream(
                opts,
                model_size=model_size,
                model_order=model_order,
                model_resize=model_resize,
                sensor_size=(int(sensor[0]), int(sensor[1])) if sensor else None,
                can_stretch="ScalerCrops" in self._cam.camera_controls,
            )
            self._configure_and_start()
        except BaseException:
            self.close()
            raise
        w, h = self.size
        self.name = f"picamera2:{self._num}:{self.plan.stream}:{w}x{h}"
        self._frame_source = f"picamera2:{self._num}"
        log.info(
            "camera %d: %s %dx%d %s (stride %d), %d buffers, a frame every %.1f ms, stall after %.1f s",
            self._num,
            self.plan.stream,
            w,
            h,
            self.plan.fmt,
            self.stride,
            BUFFER_COUNT,
            self.frame_us / 1000,
            self.stall_s,
        )

    # ---- opening ----------------------------------------------------------------------
    def _configure_and_start(self) -> None:
        cam, plan = self._cam, self.plan
        stream_cfg = {"format": plan.fmt, "size": plan.size, "preserve_ar": plan.preserve_ar}
        # align_configuration() is not called: it would shrink the width to a multiple of 32/64
        # pixels, so the frame would no longer be the model's size; padding is the stride's job.
        # display/encode None: no preview or encoder touches the requests.
        common: dict[str, Any] = {"buffer_count": BUFFER_COUNT, "queue": True, "display": None, "encode": None}
        try:
            if plan.stream == "main":
                config = cam.create_video_configuration(main=stream_cfg, **common)
            else:
                main = {"format": "YUV420", "size": plan.main_size}
                config = cam.create_video_configuration(main=main, lores=stream_cfg, **common)
            cam.configure(config)
        except Exception as err:  # noqa: BLE001  (picamera2 raises RuntimeError/ValueError with its reason)
            msg = _first_line(err)
            if "lores stream must be YUV" in msg:
                raise SourceError(
                    f"camera {self._num}: on a Pi 4 or older the lores stream is YUV only; "
                    "set source.picamera2_stream = 'main'"
                ) from None
            raise SourceError(
                f"camera {self._num}: cannot configure {plan.stream} {plan.size[0]}x{plan.size[1]} {plan.fmt}: {msg}"
            ) from None
        actual = cam.camera_config[plan.stream]
        if actual["format"] != plan.fmt:
            raise SourceError(f"camera {self._num}: asked for {plan.fmt}, the camera delivers {actual['format']}")
        self.size: tuple[int, int] = (int(actual["size"][0]), int(actual["size"][1]))
        self.stride = int(actual["stride"])
        if self.size != plan.size:
            # libcamera adjusted it (a size the ISP cannot produce): preprocessing resizes instead
            log.info("camera %d: asked for %dx%d, libcamera delivers %dx%d", self._num, *plan.size, *self.size)
        self.frame_us = frame_interval_us(self._fps, cam.camera_controls.get("FrameDurationLimits"))
        self.stall_s = max(self._stall_frames * self.frame_us / 1e6, STALL_MIN_S)
        try:
            cam.set_controls({"FrameDurationLimits": (self.frame_us, self.frame_us)})
            cam.start()
        except Exception as err:  # noqa: BLE001
            raise SourceError(f"camera {self._num}: cannot start: {_first_line(err)}") from None

    # ---- frames -----------------------------------------------------------------------
    def read(self) -> Frame | SourceProblem | None:
        cam = self._cam
        if cam is None:
            raise SourceError(f"camera {self._num} is closed")
        timeout = self.stall_s if self._delivered else max(self.stall_s, FIRST_FRAME_MIN_S)
        # wait=False gives the job, so that a wait that times out can be cancelled: a job left in
        # picamera2's queue would take the next frame's request and never give it back
        job = cam.capture_request(wait=False)
        try:
            request = cam.wait(job, timeout=timeout)
        except TimeoutError:
            self._abandon(job)
            raise SourceStalledError(
                f"camera {self._num}: no frame for {timeout:.1f} s (source.picamera2_stall_frames = "
                f"{self._stall_frames}); "
                "a frozen camera (libcamera 'frontend has timed out' / 'dequeue timer expired') or a loose cable"
            ) from None
        except Exception as err:  # noqa: BLE001  (raised by picamera2's event loop for this job)
            raise SourceError(f"camera {self._num}: capture failed: {_first_line(err)}") from None
        lend = ExitStack()
        lend.callback(request.release)  # runs last: the buffer goes back to the camera
        try:
            # the mapping is held open for as long as the frame is lent, and closed before the
            # request is released: "release by scope", as picamera2's MappedArray intends
            mapped = lend.enter_context(self._api.mapped_array(request, self.plan.stream, reshape=False))
            pixels = frame_view(np.asarray(mapped.array, dtype=np.uint8).reshape(-1), self.size, self.stride)
        except Exception as err:  # noqa: BLE001  (a request whose buffer cannot be mapped)
            lend.close()
            raise SourceError(f"camera {self._num}: cannot map the frame's buffer: {_first_line(err)}") from None
        except BaseException:
            lend.close()
            raise
        self._delivered += 1
        frame = frame_from_pixels(self._stamp, self._frame_source, pixels, self.plan.order)
        self._lent[frame.seq] = lend
        return frame

    def release(self, frame: Frame) -> None:
        lend = self._lent.pop(frame.seq, None)
        if lend is None:
            return  # released already, or lent before a close
        try:
            lend.close()
        except Exception as err:  # noqa: BLE001  (a camera gone since: nothing to give back to)
            log.warning("camera %d: releasing frame %d: %s", self._num, frame.seq, _first_line(err))

    def _abandon(self, job: Any) -> None:
        """Take a timed-out capture out of picamera2's job queue; if it completed meanwhile, give its request back."""
        cancel = getattr(self._cam, "cancel_all_and_flush", None)
        if cancel is not None:
            cancel()
        try:
            late = job.get_result(timeout=0)
        except Exception:  # noqa: BLE001  (cancelled or still pending: nothing was taken)
            return
        late.release()

    def close(self) -> None:
        """Give every lent request back, stop and close the camera. Frames still held after this
        point no longer belong to the caller (the memory may be reused or unmapped)."""
        for lend in self._lent.values():
            try:
                lend.close()
            except Exception as err:  # noqa: BLE001
                log.warning("camera %d: releasing a frame on close: %s", self._num, _first_line(err))
        self._lent.clear()
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as err:  # noqa: BLE001  (close what can be closed; the agent reopens later)
                log.warning("camera %d: %s failed: %s", self._num, step.__name__, _first_line(err))


def _open_camera(api: Picamera2Api, num: int) -> Any:
    """Picamera2(num), with a one-line SourceError for the ways it fails on a Pi."""
    try:
        cameras = api.camera_class.global_camera_info()
    except Exception as err:  # noqa: BLE001
        raise SourceError(f"picamera2 cannot list the cameras: {_first_line(err)}") from None
    if not cameras:
        raise SourceError(_no_camera(num))
    if num >= len(cameras):
        raise SourceError(f"source.picamera2_camera = {num}, but only {len(cameras)} camera(s) are connected")
    try:
        return api.camera_class(num)
    except IndexError:  # what Picamera2() itself raises when the camera is not detected
        raise SourceError(_no_camera(num)) from None
    except Exception as err:  # noqa: BLE001
        reasons = _reasons(err)
        if any("busy" in r.lower() or "acquire" in r.lower() for r in reasons):
            raise SourceError(
                f"camera {num} is in use by another process ({reasons[-1]}); stop it (rpicam-*, libcamera-*, "
                "another agent) and the agent opens the camera on its next try"
            ) from None
        raise SourceError(f"camera {num} cannot be opened: {'; '.join(reasons)}") from None


def _no_camera(num: int) -> str:
    return (
        f"no camera {num} found by libcamera: check the ribbon cable and the camera_auto_detect / dtoverlay "
        "setting, and that `rpicam-hello --list-cameras` lists it"
    )


def _reasons(err: BaseException) -> list[str]:
    """The messages of an exception and the ones it was raised from (picamera2 wraps the real
    reason, "Failed to acquire camera: Device or resource busy", in "Camera __init__ sequence did not complete.")."""
    out: list[str] = []
    e: BaseException | None = err
    while e is not None and len(out) < 5:
        out.append(_first_line(e))
        e = e.__cause__ or e.__context__
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
