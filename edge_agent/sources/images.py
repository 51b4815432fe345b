"""`images`: a folder or glob of JPEG/PNG/BMP files, in name order, optionally looping."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bounded import FileReadError, quote_part, read_bytes_bounded
from edge_agent.config.source import DEFAULT_MAX_PIXELS, ImagesOptions
from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, SourceProblem, Stamp, frame_from_pixels
from edge_agent.sources.image_header import ImageHeaderError, ImageSize, read_image_size

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


def max_image_bytes(max_pixels: int) -> int:
    """The largest file an image of `max_pixels` can be: 8 bytes a pixel (16-bit RGBA stored
    uncompressed, the widest of the formats read) plus room for headers and metadata. A file
    beyond it is not read whole into memory."""
    return max_pixels * 8 + (16 << 20)


def decode_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | str:
    """The image as BGR uint8 H×W×3, or a one-line reason it cannot be used.

    Whatever is wrong with the file is the file's problem, returned as the reason: the size its
    header declares is checked against `max_pixels` before the decoder allocates it, and an
    error OpenCV raises (its own pixel limit, a corrupt stream) is caught, so one bad file never
    ends or restarts the source."""
    raw = _read_whole(path, max_pixels)
    if isinstance(raw, str):
        return raw
    size = _declared_size(path, raw, max_pixels)
    if isinstance(size, str):
        return size
    return _decode(path, raw, size, max_pixels)


def _read_whole(path: Path, max_pixels: int) -> bytes | str:
    """The file's bytes, or why they cannot be an image: unreadable, too large, empty, cut short."""
    try:
        raw = read_bytes_bounded(path, what="image", max_bytes=max_image_bytes(max_pixels))
    except OSError as err:
        why = str(err) if isinstance(err, FileReadError) else (err.strerror or str(err))
        return f"cannot read {path.name}: {quote_part(why)}"
    if not raw:
        return f"{path.name} is empty"
    cut = incomplete_reason(raw[:16], raw[-TAIL_BYTES:], len(raw))
    return raw if cut is None else f"{path.name} is a {cut}"


def _declared_size(path: Path, raw: bytes, max_pixels: int) -> ImageSize | str:
    """The size the header declares, or why the image is not decoded: no header we can read, too large."""
    try:
        size = read_image_size(raw)
    except ImageHeaderError as err:
        return f"{path.name} is not a decodable JPEG/PNG/BMP image: {err}"
    if size.pixels > max_pixels:
        return (
            f"{path.name} is a {size.format} of {size.width}×{size.height} = {size.pixels / 1e6:.1f} megapixels, "
            f"more than source.max_pixels = {max_pixels} ({max_pixels / 1e6:g} MP): not decoded"
        )
    return size


def _decode(path: Path, raw: bytes, size: ImageSize, max_pixels: int) -> np.ndarray | str:
    """The decoded BGR image, or why OpenCV would not give one."""
    try:
        img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        return f"{path.name} is not a decodable JPEG/PNG/BMP image: {quote_part(_opencv_reason(err))}"
    if img is None:
        return f"{path.name} is not a decodable JPEG/PNG/BMP image (OpenCV rejects its {size.format} data)"
    if img.shape[0] * img.shape[1] > max_pixels:  # a decoder that did not follow the header
        return f"{path.name} decoded to {img.shape[1]}×{img.shape[0]} pixels, more than source.max_pixels"
    return np.ascontiguousarray(img)


def decode_image_or_reason(path: Path, max_pixels: int) -> np.ndarray | str:
    """`decode_image`, with anything it raises made the file's reason: a source goes on past one
    bad file whatever went wrong with it (a source restarted by one file would read the files
    before it again, forever when the file stays)."""
    try:
        return decode_image(path, max_pixels)
    except Exception as err:  # noqa: BLE001 - reported as the file's problem, with its type
        return f"{path.name} could not be decoded: {type(err).__name__}: {quote_part(str(err))}"


def _opencv_reason(err: Exception) -> str:
    """OpenCV's message without its file/line preamble: "(-215:Assertion failed) ... in function 'x'"."""
    text = " ".join(str(err).split())
    at = text.find(" error: ")
    return text[at + len(" error: ") :] if at >= 0 else text


class ImageFolderSource:
    def __init__(self, opts: ImagesOptions, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.name = f"images:{opts.path}"
        self._files = list_images(opts.path)
        if not self._files:
            raise SourceError(f"source.path: no JPEG/PNG/BMP images match {opts.path}")
        self._loop = opts.loop
        self._max_pixels = max_pixels
        self._next = 0
        self._stamp = Stamp()

    def read(self) -> Frame | SourceProblem | None:
        if self._next >= len(self._files):
            if not self._loop:
                return None
            self._next = 0
        path = self._files[self._next]
        self._next += 1
        img = decode_image_or_reason(path, self._max_pixels)
        if isinstance(img, str):
            return SourceProblem(path.name, img)
        return frame_from_pixels(self._stamp, path.name, img, "bgr")

    def release(self, frame: Frame) -> None:
        """Nothing to give back: each decoded image is its own array."""

    def close(self) -> None:
        self._files = []
