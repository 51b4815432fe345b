"""`opencv`: a V4L2 camera, an RTSP/HTTP stream or a video file, through `cv2.VideoCapture`.

Frames are decoded straight into a pool of preallocated slots (`cap.read(image=slot)`): no
array is allocated per frame once the first frame has set the size. A slot is lent with its
frame until `release()`.

Failures are split between this source and the agent. The source never sleeps or retries:
a stream that drops or a camera that vanishes raises `SourceError` (`SourceStalledError` when
the read timed out), and the agent closes it and opens a new one with backoff (0.5 s
doubling to `source.reconnect_max_s`), raising `source_error` / `source_stalled` and going
`degraded` until frames come again. Retrying here instead would have to block the agent's
loop (commands, outbox, watchdog) during the waits, or hide the outage from the status.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge_agent.config.source import OpenCvOptions
from edge_agent.errors import SourceError, SourceStalledError
from edge_agent.sources.base import MIN_LENT, Frame, SourceProblem, Stamp, frame_from_pixels

log = logging.getLogger(__name__)

# one slot more than a caller may hold, so that a read never waits for a release
POOL_SIZE = MIN_LENT + 1
# a failed read that took this share of the read timeout is a stall, not a drop
STALL_SHARE = 0.8


def redact_url(url: str) -> str:
    """The URL without its password: it names the source in logs, events and results."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Target:
    """What to open: a V4L2 device (index or path), a stream URL or a video file."""

    kind: Literal["device", "stream", "file"]
    location: int | str
    label: str  # for names and messages: never holds a password

    @classmethod
    def of(cls, opts: OpenCvOptions) -> Target:
        if opts.device is not None:
            label = f"/dev/video{opts.device}" if isinstance(opts.device, int) else opts.device
            return cls("device", opts.device, label)
        if opts.url is not None:
            return cls("stream", opts.url, redact_url(opts.url))
        assert opts.path is not None  # OpenCvOptions asks for exactly one of the three
        path = str(Path(opts.path).expanduser())
        return cls("file", path, path)


def _open_file(path: str) -> cv2.VideoCapture:
    p = Path(path)
    if not p.exists():
        raise SourceError(f"source.path: no such video file {path}")
    if not p.is_file():
        raise SourceError(f"source.path: {path} is not a file")
    if not os.access(p, os.R_OK):
        raise SourceError(f"source.path: {path} is not readable by this user")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise SourceError(f"source.path: {p.name} is not a video FFmpeg can decode (empty, damaged or unknown format)")
    return cap


def _open_stream(url: str, label: str, opts: OpenCvOptions) -> cv2.VideoCapture:
    # without the timeouts FFmpeg may wait forever on a host that accepts and never answers
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(opts.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(opts.read_timeout_s * 1000),
    ]
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise SourceError(
            f"source.url: cannot open {label} within {opts.open_timeout_s:g} s "
            "(refused, unreachable, not a video stream, or wrong credentials)"
        )
    return cap


def _open_device(device: int | str, label: str, opts: OpenCvOptions) -> cv2.VideoCapture:
    if isinstance(device, str):
        if not Path(device).exists():
            raise SourceError(f"source.device: no such device {device} (unplugged?)")
        if not os.access(device, os.R_OK | os.W_OK):
            raise SourceError(f"source.device: {device} is not accessible (is the user in the 'video' group?)")
    cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    if not cap.isOpened():
        raise SourceError(f"source.device: cannot open {label} as a V4L2 camera (unplugged, busy or not a camera)")
    # the format first: the sizes and rates a camera offers depend on it
    if opts.fourcc is not None:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*opts.fourcc))
    if opts.capture_size is not None:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, opts.capture_size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, opts.capture_size[1])
    if opts.capture_fps is not None:
        cap.set(cv2.CAP_PROP_FPS, opts.capture_fps)
    # a camera picks the nearest mode it has: say what it picked rather than fail
    got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if opts.capture_size is not None and got != opts.capture_size:
        log.warning("%s: asked for %dx%d, the camera delivers %dx%d", label, *opts.capture_size, *got)
    # bounds a read on a camera that stops delivering (ignored by builds without it)
    cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(opts.read_timeout_s * 1000))
    return cap


class OpenCvSource:
    def __init__(self, opts: OpenCvOptions) -> None:
        self._opts = opts
        self._target = Target.of(opts)
        self.name = f"opencv:{self._target.label}"
        # cameras and streams are live (the agent takes the newest frame); a file's every frame counts
        self.live = self._target.kind != "file"
        self._stamp = Stamp()
        # slot i holds the array OpenCV decodes into; None until the first frame sets the size
        self._slots: list[np.ndarray | None] = [None] * POOL_SIZE
        self._free: deque[int] = deque(range(POOL_SIZE))
        self._lent: dict[int, int] = {}  # frame seq → slot
        # for the stats topic: frames delivered, failed reads, slots (re)allocated, file passes,
        # files that ended before the frame count in their header
        self.counters: dict[str, int] = {"frames": 0, "read_failures": 0, "allocations": 0, "loops": 0, "truncated": 0}
        self._ended = False  # a file reached its end; the next read loops or returns None
        self._cap: cv2.VideoCapture | None = self._open()

    # ---- opening --------------------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture:
        t = self._target
        try:
            if t.kind == "file":
                assert isinstance(t.location, str)
                cap = _open_file(t.location)
            elif t.kind == "stream":
                assert isinstance(t.location, str)
                cap = _open_stream(t.location, t.label, self._opts)
            else:
                cap = _open_device(t.location, t.label, self._opts)
        except cv2.error as err:
            raise SourceError(f"{t.label}: OpenCV cannot open it: {_first_line(err)}") from None
        # what a file's header promises, to tell a truncated file from its end
        self._expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if t.kind == "file" else 0
        self._pass_frames = 0
        return cap

    # ---- reading --------------------------------------------------------------------------
    def read(self) -> Frame | SourceProblem | None:
        if self._ended:
            if not self._opts.loop:
                return None
            self._restart_file()
        if self._cap is None:
            raise SourceError(f"{self._target.label}: the source is closed")
        if not self._free:
            raise SourceError(f"{self.name}: all {POOL_SIZE} frame slots are lent: frames must be released")
        slot = self._free[0]
        buf = self._slots[slot]
        started = time.monotonic()
        img = self._decode_into(self._cap, buf)
        if img is None:
            return self._failed(time.monotonic() - started)
        if img is not buf:
            # the first frame, or a new size after the stream changed: from now on OpenCV
            # decodes into this array
            self._slots[slot] = img
            self.counters["allocations"] += 1
        self._free.popleft()
        index = self._pass_frames
        self._pass_frames += 1
        self.counters["frames"] += 1
        where = f"{Path(self._target.label).name}#{index}" if self._target.kind == "file" else self._target.label
        frame = frame_from_pixels(self._stamp, where, img, "bgr")
        self._lent[frame.seq] = slot
        return frame

    def _decode_into(self, cap: cv2.VideoCapture, buf: np.ndarray | None) -> np.ndarray | None:
        """The next frame, decoded into `buf` when its size fits (OpenCV allocates otherwise)."""
        try:
            ok, img = cap.read(image=buf)
        except cv2.error as err:
            log.debug("%s: read raised %s", self.name, _first_line(err))
            return None
        return img if ok and isinstance(img, np.ndarray) else None

    def _failed(self, took_s: float) -> Frame | SourceProblem | None:
        t = self._target
        if t.kind == "file":
            return self._end_of_file()
        self.counters["read_failures"] += 1
        self._close_capture()
        what = "stream" if t.kind == "stream" else "camera"
        if took_s >= STALL_SHARE * self._opts.read_timeout_s:
            raise SourceStalledError(
                f"{t.label}: no frame for {took_s:.1f} s (source.opencv_read_timeout_s = "
                f"{self._opts.read_timeout_s:g}): the {what} stalled"
            )
        cause = "the connection closed" if t.kind == "stream" else "the camera was unplugged or failed"
        raise SourceError(f"{t.label}: the {what} stopped after {self._pass_frames} frame(s) ({cause})")

    def _end_of_file(self) -> Frame | SourceProblem | None:
        n, expected = self._pass_frames, self._expected
        self._ended = True
        if n == 0:
            # a loop over a file without a decodable frame would spin
            self._close_capture()
            raise SourceError(f"source.path: {Path(self._target.label).name} has no decodable frame")
        if expected > n:
            self.counters["truncated"] += 1
            return SourceProblem(
                Path(self._target.label).name,
                f"the video ended after {n} of the {expected} frames its header announces: "
                "the file is truncated or damaged",
            )
        return None if not self._opts.loop else self.read()

    def _restart_file(self) -> None:
        # reopened rather than rewound: a file replaced in place is picked up, a deleted one noticed
        self._close_capture()
        self._ended = False
        self.counters["loops"] += 1
        self._cap = self._open()

    # ---- buffers and lifecycle ------------------------------------------------------------
    def release(self, frame: Frame) -> None:
        slot = self._lent.pop(frame.seq, None)
        if slot is not None:
            self._free.append(slot)

    def _close_capture(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def close(self) -> None:
        # lent frames stay valid: their arrays belong to the pool, not to the capture
        self._close_capture()


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


__all__ = ["POOL_SIZE", "OpenCvSource", "Target", "redact_url"]
