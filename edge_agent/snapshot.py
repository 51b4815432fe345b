"""A frame as a JPEG that fits a size limit: lower quality first, then half the size, again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy.typing as npt

QUALITIES = (85, 70, 50)
MAX_HALVINGS = 5


@dataclass(frozen=True)
class Snapshot:
    jpeg: bytes
    width: int
    height: int
    quality: int


def encode_within(pixels: npt.NDArray[Any], max_bytes: int) -> Snapshot | None:
    """The largest, best JPEG of `pixels` (BGR or gray) within max_bytes; None if even a small
    thumbnail does not fit (or the frame cannot be encoded)."""
    img: npt.NDArray[Any] = pixels
    for _ in range(MAX_HALVINGS + 1):
        for q in QUALITIES:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok and buf.size <= max_bytes:
                return Snapshot(buf.tobytes(), int(img.shape[1]), int(img.shape[0]), q)
        h, w = img.shape[:2]
        if min(h, w) < 16:
            return None
        img = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return None
