"""`images`: a folder or glob of JPEG/PNG/BMP files, in name order, optionally looping."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, SourceProblem, Stamp, frame_from_pixels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(pattern: str) -> list[Path]:
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    elif p.is_file():
        files = [p]
    else:
        # a pattern may be absolute ("/srv/frames/*.jpg"), which Path.glob does not take
        files = [Path(f) for f in glob.glob(str(p), recursive=True)]  # noqa: PTH207
        files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    return sorted(files)


# how much of a file's end `incomplete_reason` looks at: enough to skip a camera's zero padding
TAIL_BYTES = 4096
_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


def incomplete_reason(head: bytes, tail: bytes, size: int) -> str | None:
    """Why a JPEG/PNG/BMP file is cut short (None: complete, or a format we cannot tell).

    Decoders differ on a truncated file: OpenCV 5 rejects it, OpenCV 4 builds with libjpeg give
    back a half-grey image and only print "Premature end of JPEG file". So the end is checked
    here: JPEG's end-of-image marker, PNG's IEND chunk, BMP's declared file size. Trailing zero
    bytes are ignored (some cameras pad files to a block size).
    """
    end = tail.rstrip(b"\0")
    if head.startswith(_JPEG):
        return None if end.endswith(b"\xff\xd9") else "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG):
        return None if end[-8:-4] == b"IEND" else "truncated PNG (no IEND chunk)"
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return None if size >= declared else f"truncated BMP ({size} of {declared} bytes)"
    return None


def decode_image(path: Path) -> np.ndarray | str:
    """The image as BGR uint8 H×W×3, or a one-line reason it cannot be used."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return f"cannot read {path.name}: {err.strerror or err}"
    if data.size == 0:
        return f"{path.name} is empty"
    cut = incomplete_reason(data[:16].tobytes(), data[-TAIL_BYTES:].tobytes(), int(data.size))
    if cut is not None:
        return f"{path.name} is a {cut}"
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        return f"{path.name} is not a decodable JPEG/PNG/BMP image"
    return np.ascontiguousarray(img)


class ImageFolderSource:
    def __init__(self, cfg: SourceConfig) -> None:
        assert cfg.path is not None
        self.name = f"images:{cfg.path}"
        self._files = list_images(cfg.path)
        if not self._files:
            raise SourceError(f"source.path: no JPEG/PNG/BMP images match {cfg.path}")
        self._loop = cfg.loop
        self._next = 0
        self._stamp = Stamp()

    def read(self) -> Frame | SourceProblem | None:
        if self._next >= len(self._files):
            if not self._loop:
                return None
            self._next = 0
        path = self._files[self._next]
        self._next += 1
        img = decode_image(path)
        if isinstance(img, str):
            return SourceProblem(path.name, img)
        return frame_from_pixels(self._stamp, path.name, img, "bgr")

    def release(self, frame: Frame) -> None:
        """Nothing to give back: each decoded image is its own array."""

    def close(self) -> None:
        self._files = []
