"""Real videos and streams for the `opencv` source tests: files written with OpenCV's own
VideoWriter, and an MJPEG-over-HTTP server on loopback like the ones IP cameras and
mjpg-streamer run (multipart/x-mixed-replace, one JPEG per part).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from edge_agent.broker import free_port

# gray level of frame i in the test videos: MJPEG keeps a flat frame within ±2 levels of it,
# so round(mean / STEP) gives i back for i < 256 // STEP
STEP = 6
MAX_INDEX = 255 // STEP


def gray_frame(i: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), (i % (MAX_INDEX + 1)) * STEP, np.uint8)


def index_of(pixels: np.ndarray) -> int:
    return round(float(pixels.mean()) / STEP)


def write_video(path: Path, frames: Sequence[np.ndarray], *, fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc} into {path.suffix}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


class MjpegServer:
    """Serves `frame(k)` as an endless MJPEG stream at `fps` to every client, on a fixed port
    so that it can be stopped and started again. `stall()` keeps the connections open but
    sends nothing (a camera that froze); `stop()` closes everything (a camera that went away)."""

    def __init__(self, frame: Callable[[int], np.ndarray], *, fps: float = 50.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.sent = 0  # frames sent, over all connections and restarts
        self._frame = frame
        self._period = 1.0 / fps
        self._stopping = threading.Event()
        self._stalled = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    while not server._stopping.is_set():
                        if server._stalled.is_set():
                            time.sleep(0.02)
                            continue
                        with server._lock:
                            k = server.sent
                            server.sent += 1
                        ok, jpg = cv2.imencode(".jpg", server._frame(k), [cv2.IMWRITE_JPEG_QUALITY, 100])
                        assert ok
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {jpg.size}\r\n\r\n"
                        self.wfile.write(head.encode() + jpg.tobytes() + b"\r\n")
                        self.wfile.flush()
                        time.sleep(server._period)
                except OSError:
                    pass  # the client went away

            def log_message(self, *_: object) -> None:
                pass

        return Handler

    def start(self) -> MjpegServer:
        self._stopping.clear()
        self._stalled.clear()
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        srv.daemon_threads = True
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stall(self) -> None:
        self._stalled.set()

    def stop(self) -> None:
        """Ends every connection and stops listening (connections are refused until `start`)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        time.sleep(2 * self._period)  # handlers notice `_stopping` and close their sockets

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
