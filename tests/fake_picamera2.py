"""A stand-in for picamera2 on a machine without a Pi camera.

It follows picamera2's documented API and buffer semantics (picamera2/picamera2.py,
request.py, job.py, allocators/dmaallocator.py at raspberrypi/picamera2 3e6dff0):

- `Picamera2(camera_num)` indexes `global_camera_info()` (IndexError when no camera is
  detected) and acquires the camera: a camera held by another process fails with
  RuntimeError("Camera __init__ sequence did not complete.") raised from
  RuntimeError("Failed to acquire camera: Device or resource busy").
- `create_video_configuration` has the real defaults (main XBGR8888 1280x720, lores YUV420,
  buffer_count 6, queue True, FrameDurationLimits 33333 µs) and checks keys the same way;
  `configure` applies `check_camera_config`'s rules (even sizes, lores not larger than main,
  lores must be YUV on VC4) and fills in `stride` and `framesize`.
- Buffers are a fixed pool of `buffer_count` per stream, each an mmap (as DmaAllocator maps
  dmabufs), rows padded to 64 bytes as the Pi 5 ISP does. A completed request holds its
  buffers until `release()` (reference counted, like CompletedRequest); while it is not
  released the camera cannot reuse them. With `queue=True`, picamera2 keeps the newest
  completed request back (one buffer), so an app holding buffer_count - 1 requests leaves the
  camera none: no request completes, which is the real starvation symptom (capture waits).
- `capture_request(wait=False)` returns a Job; `wait(job, timeout)` raises TimeoutError
  (concurrent.futures) when no frame completes in time; `cancel_all_and_flush()` cancels
  pending jobs. `MappedArray(request, stream, reshape=...)` maps the buffer for the `with`
  block, without copying; `make_array` copies, as the real one does.
- "RGB888" is B,G,R in memory, "BGR888" R,G,B, "XRGB8888" B,G,R,255, "XBGR8888" R,G,B,255,
  "YUV420" I420 planes (BT.601 limited range, OpenCV's conversion).
- `FakeWorld.freeze()` makes the open camera stop completing requests, for good (a frontend
  timeout: only closing and reopening the camera recovers) or for some seconds.

Frames are produced when the app asks for one (not by a clock), so tests run at full speed.
Not modelled: libcamera's own timing, sensor modes and the sizes libcamera "adjusts", the ISP's
real scaling and color, dmabuf cache syncs, the event loop thread.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.sources.picamera2_source import Picamera2Api

STRIDE_ALIGN = 64
BYTES_PER_PIXEL = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}
PAD_BYTE = 0xEE  # what the padding at the end of each row holds: a test sees it if it leaks into a frame
# IMX708 (Camera Module 3) in its 2304x1296 mode, µs
FRAME_DURATION_LIMITS = (8000, 2_000_000, 33333)

Scene = Callable[[int, int, int], npt.NDArray[np.uint8]]  # (frame number, width, height) -> H×W×3 RGB


def gradient_scene(n: int, w: int, h: int) -> npt.NDArray[np.uint8]:
    """R varies along x, G along y, B with the frame number: every pixel's position is in its value."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = (np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8)[None, :]
    img[..., 1] = (np.arange(h) * 255 // max(h - 1, 1)).astype(np.uint8)[:, None]
    img[..., 2] = n % 256
    return img


@dataclass
class FakeWorld:
    """The hardware around the fake: which cameras exist, who holds them, what they see."""

    cameras: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a"}
        ]
    )
    platform: str = "pisp"  # "vc4" for a Pi 4 or older
    held_elsewhere: set[int] = field(default_factory=set)  # cameras another process has acquired
    scene: Scene = gradient_scene
    instances: list[FakePicamera2] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def api(self) -> Picamera2Api:
        world = self

        class BoundPicamera2(FakePicamera2):
            def __init__(self, camera_num: int = 0, **kw: Any) -> None:
                super().__init__(world, camera_num, **kw)

            @staticmethod
            def global_camera_info() -> list[dict[str, Any]]:
                return [{**c, "Num": i} for i, c in enumerate(world.cameras)]

        return Picamera2Api(camera_class=BoundPicamera2, mapped_array=FakeMappedArray)

    def freeze(self, seconds: float | None = None) -> None:
        """The open cameras stop completing requests: for good (None), or for `seconds`."""
        until = float("inf") if seconds is None else time.monotonic() + seconds
        with self.lock:
            for cam in self.instances:
                if cam.is_open:
                    cam.frozen_until = until
            self.lock.notify_all()

    @property
    def open_cameras(self) -> list[FakePicamera2]:
        return [c for c in self.instances if c.is_open]


class FakeJob:
    """picamera2.job.Job: a capture that completes when a frame does."""

    def __init__(self, cam: FakePicamera2) -> None:
        self._cam = cam
        self._cancelled = False
        self._result: FakeCompletedRequest | None = None

    def cancel(self) -> None:
        self._cancelled = True

    def get_result(self, timeout: float | None = None) -> FakeCompletedRequest:
        deadline = None if timeout is None else time.monotonic() + timeout
        cam = self._cam
        with cam.world.lock:
            while True:
                if self._cancelled:
                    raise CancelledError
                if self._result is not None:
                    return self._result
                if cam.can_complete():
                    self._result = cam.complete_request()
                    cam.jobs.remove(self)
                    return self._result
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError  # concurrent.futures.TimeoutError is TimeoutError since 3.11
                wake = cam.frozen_until - time.monotonic() if cam.frozen_until != float("inf") else None
                waits = [x for x in (left, wake) if x is not None and x > 0]
                cam.world.lock.wait(min(waits) if waits else None)


class FakeCompletedRequest:
    """picamera2.request.CompletedRequest: holds one buffer per stream until released."""

    def __init__(self, cam: FakePicamera2, slot: int) -> None:
        self.picam2 = cam
        self.slot = slot
        self.ref_count = 1
        self.stop_count = cam.stop_count
        self.config = {k: dict(v) for k, v in cam.camera_config.items() if k in ("main", "lores") and v}
        self.stream_map: dict[str, int] = {name: slot for name in self.config}

    def acquire(self) -> None:
        with self.picam2.world.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        cam = self.picam2
        with cam.world.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                cam.lent.discard(self.slot)  # back to the camera (requeued, or freed after a stop)
                self.config = {}
                self.stream_map = {}
                cam.world.lock.notify_all()

    def buffer(self, name: str) -> mmap.mmap:
        if self.stream_map.get(name) is None:  # real: KeyError / "Stream ... is not defined"
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self.picam2.buffers[name][self.slot]

    def make_array(self, name: str) -> npt.NDArray[np.uint8]:
        """A copy, as the real make_array (so the buffer can go back to the camera)."""
        with FakeMappedArray(self, name) as m:
            assert m.array is not None
            return np.ascontiguousarray(m.array) if not m.array.data.c_contiguous else np.copy(m.array)

    def get_metadata(self) -> dict[str, Any]:
        return {"FrameDuration": self.picam2.frame_us, "SensorTimestamp": time.monotonic_ns()}


class FakeMappedArray:
    """picamera2.request.MappedArray: the buffer as a numpy array for the `with` block, no copy."""

    def __init__(self, request: FakeCompletedRequest, stream: str, reshape: bool = True, write: bool = True) -> None:
        self._request = request
        self._stream = stream
        self._reshape = reshape
        self._array: npt.NDArray[np.uint8] | None = None

    def __enter__(self) -> FakeMappedArray:
        mm = self._request.buffer(self._stream)
        array = np.frombuffer(mm, dtype=np.uint8)
        if self._reshape:
            array = make_array_shared(array, self._request.config[self._stream])
        self._array = array
        return self

    def __exit__(self, *_: object) -> None:
        self._array = None

    @property
    def array(self) -> npt.NDArray[np.uint8] | None:
        return self._array


def make_array_shared(array: npt.NDArray[np.uint8], config: dict[str, Any]) -> npt.NDArray[np.uint8]:
    """picamera2's Helpers._make_array_shared for the formats the fake delivers."""
    fmt, (w, h), stride = config["format"], config["size"], config["stride"]
    if fmt in BYTES_PER_PIXEL:
        bpp = BYTES_PER_PIXEL[fmt]
        rows = array[: h * stride].reshape((h, stride))[:, : w * bpp]
        return rows.reshape((h, w, bpp))
    if fmt == "YUV420":
        return array[: h * 3 // 2 * stride].reshape((h * 3 // 2, stride))
    raise RuntimeError("Format " + fmt + " not supported")


class FakePicamera2:
    def __init__(self, world: FakeWorld, camera_num: int = 0, **_: Any) -> None:
        self.world = world
        self.is_open = False
        self.started = False
        camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError without a camera, as the real one
        self.camera_idx = camera_num
        if camera_num in world.held_elsewhere or any(c.is_open and c.camera_idx == camera_num for c in world.instances):
            try:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            except RuntimeError as e:
                raise RuntimeError("Camera __init__ sequence did not complete.") from e
        self.camera_controls: dict[str, tuple[Any, Any, Any]] = {"FrameDurationLimits": FRAME_DURATION_LIMITS}
        if world.platform == "pisp":  # per-stream crops (preserve_ar) exist on a Pi 5 only
            self.camera_controls["ScalerCrops"] = ((0, 0, 64, 64), (0, 0, 4608, 2592), (0, 0, 4608, 2592))
        self.sensor_resolution = (4608, 2592)
        self.camera_config: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        self.buffers: dict[str, list[mmap.mmap]] = {}
        self.lent: set[int] = set()  # slots whose request the app holds
        self.jobs: list[FakeJob] = []
        self.stop_count = 0
        self.frames = 0
        self.max_lent = 0
        self.frozen_until = 0.0
        self.leaked_maps = 0  # buffers that could not be unmapped on close (a numpy view still alive)
        self.is_open = True
        with world.lock:
            world.instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:  # replaced per world by FakeWorld.api()
        raise NotImplementedError

    @property
    def frame_us(self) -> int:
        limits = self.controls.get("FrameDurationLimits", (33333, 33333))
        return int(limits[1])

    # ---- configuration ----------------------------------------------------------------
    @staticmethod
    def _stream(defaults: dict[str, Any], updates: dict[str, Any] | None) -> dict[str, Any] | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key in updates:
            if key not in valid:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
        return {**defaults, **updates}

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        m = self._stream({"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main or {})
        assert m is not None
        self.align_stream(m, optimal=False)
        lo = self._stream({"format": "YUV420", "size": m["size"], "preserve_ar": False}, lores)
        if lo is not None:
            self.align_stream(lo, optimal=False)
        for name, stream in (("display", display), ("encode", encode)):
            if stream is not None and {"main": m, "lores": lo}.get(stream) is None:
                raise RuntimeError(f"{name.capitalize()} stream {stream} was not defined")
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": m,
            "lores": lo,
            "raw": raw,
            "controls": {"FrameDurationLimits": (33333, 33333), **(controls or {})},
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    @staticmethod
    def align_stream(stream_config: dict[str, Any], optimal: bool = True) -> None:
        align = 2
        if optimal:
            align = 128 if stream_config["format"] in ("YUV420", "YVU420") else 64
            if stream_config["format"] in ("XBGR8888", "XRGB8888"):
                align //= 2
        w, h = stream_config["size"]
        stream_config["size"] = (w - w % align, h - h % 2)

    @staticmethod
    def align_configuration(config: dict[str, Any], optimal: bool = True) -> None:
        FakePicamera2.align_stream(config["main"], optimal)
        if config.get("lores") is not None:
            FakePicamera2.align_stream(config["lores"], optimal)

    def _check_stream(self, cfg: Any, name: str) -> None:
        if type(cfg) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        fmt, size = cfg["format"], cfg["size"]
        if fmt not in BYTES_PER_PIXEL and fmt != "YUV420":
            raise RuntimeError("Bad format " + fmt + " in stream " + name)
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        self._check_stream(config["main"], "main")
        if config["lores"] is not None:
            self._check_stream(config["lores"], "lores")
            (mw, mh), (lw, lh) = config["main"]["size"], config["lores"]["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.world.platform == "vc4" and config["lores"]["format"] != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        self._unmap()
        n = config["buffer_count"]
        for name in ("main", "lores"):
            s = config[name]
            if s is None:
                continue
            w, h = s["size"]
            if s["format"] == "YUV420":
                s["stride"] = -(-w // (2 * STRIDE_ALIGN)) * 2 * STRIDE_ALIGN  # U, V rows are half as wide
                s["framesize"] = s["stride"] * h * 3 // 2
            else:
                s["stride"] = -(-(w * BYTES_PER_PIXEL[s["format"]]) // STRIDE_ALIGN) * STRIDE_ALIGN
                s["framesize"] = s["stride"] * h
            self.buffers[name] = [mmap.mmap(-1, s["framesize"]) for _ in range(n)]
        # "queue": picamera2 keeps the newest completed request back when buffer_count > 1
        self.held_back = 1 if config["queue"] and n > 1 else 0
        self.camera_config = config
        self.controls = dict(config["controls"])

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return dict(self.camera_config[name])

    def set_controls(self, controls: dict[str, Any]) -> None:
        self.controls.update(controls)

    # ---- running ----------------------------------------------------------------------
    def start(self, config: dict[str, Any] | None = None, show_preview: bool | None = False) -> None:
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        with self.world.lock:
            if self.started:
                self.started = False
                self.stop_count += 1
                self.world.lock.notify_all()

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        self._unmap()
        self.is_open = False
        self.camera_config = {}

    def _unmap(self) -> None:
        # DmaAllocator.cleanup: mmap.close() raises BufferError while a numpy view is alive; on the
        # real camera that surfaces as "Exception ignored" from the allocator's __del__
        for maps in self.buffers.values():
            for mm in maps:
                try:
                    mm.close()
                except BufferError:
                    self.leaked_maps += 1
        self.buffers = {}

    def can_complete(self) -> bool:
        """A request completes when the camera has a free buffer and its frontend is not frozen."""
        n = self.camera_config.get("buffer_count", 0) if self.camera_config else 0
        free = n - len(self.lent) - self.held_back
        return self.started and free >= 1 and time.monotonic() >= self.frozen_until

    def complete_request(self) -> FakeCompletedRequest:
        slot = next(i for i in range(self.camera_config["buffer_count"]) if i not in self.lent)
        for name, maps in self.buffers.items():
            fill(maps[slot], self.camera_config[name], self.world.scene(self.frames, *self.camera_config[name]["size"]))
        self.frames += 1
        self.lent.add(slot)
        self.max_lent = max(self.max_lent, len(self.lent))
        return FakeCompletedRequest(self, slot)

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> Any:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        job = FakeJob(self)
        with self.world.lock:
            self.jobs.append(job)
        if wait is False:
            return job
        return job.get_result(timeout=None if wait in (None, True) else float(wait))

    def wait(self, job: FakeJob, timeout: float | None = None) -> FakeCompletedRequest:
        return job.get_result(timeout=timeout)

    def cancel_all_and_flush(self) -> None:
        with self.world.lock:
            for job in self.jobs:
                job.cancel()
            self.jobs = []

    @contextlib.contextmanager
    def captured_request(self, wait: Any = None, flush: Any = None) -> Iterator[FakeCompletedRequest]:
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()


def fill(mm: mmap.mmap, config: dict[str, Any], rgb: npt.NDArray[np.uint8]) -> None:
    """Write an RGB image into a buffer in the stream's format, with padded rows."""
    buf = np.frombuffer(mm, dtype=np.uint8)
    fmt, (w, h), stride = config["format"], config["size"], config["stride"]
    if fmt == "YUV420":
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # (h*3/2, w): Y rows, then U and V rows of w/2 packed by 2
        rows = buf[: h * 3 // 2 * stride].reshape(h * 3 // 2, stride)
        rows[:] = PAD_BYTE
        rows[:h, :w] = i420[:h]
        chroma = buf[h * stride : h * 3 // 2 * stride].reshape(h, stride // 2)
        chroma[:, : w // 2] = i420[h:].reshape(h, w // 2)
        return
    order = {"RGB888": [2, 1, 0], "BGR888": [0, 1, 2], "XRGB8888": [2, 1, 0], "XBGR8888": [0, 1, 2]}[fmt]
    bpp = BYTES_PER_PIXEL[fmt]
    rows = buf[: h * stride].reshape(h, stride)
    rows[:, w * bpp :] = PAD_BYTE
    px = rows[:, : w * bpp].reshape(h, w, bpp)
    px[..., :3] = rgb[..., order]
    if bpp == 4:
        px[..., 3] = 255
