"""An image's width and height, read from its header without decoding it.

OpenCV has no header-only API, and a decoder allocates what the header claims: a 74-byte PNG
claiming 100000×100000 pixels asks for 30 GB, a 389 KB PNG of 20000×20000 takes 2.4 GB. So the
size is read here, from the few bytes every format puts first, and checked against
`source.max_pixels` before `cv2.imdecode` is called.

`cv2.imdecode` decodes by content, not by the file's suffix, so every format this OpenCV build
decodes and whose header is simple is read: PNG, JPEG, BMP, GIF, WebP, TIFF (classic and
BigTIFF), PNM/PAM/PFM, Sun raster and Radiance HDR. Anything else (JPEG 2000, AVIF, a format we
do not know) is refused: an image whose size cannot be known before decoding is not decoded.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

# how far into the file the header walkers of JPEG (APPn segments before the frame header) and
# GIF (extension blocks before the first image) look
MAX_HEADER_SCAN = 1 << 20
KNOWN_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF, PNM/PAM/PFM, Sun raster or Radiance HDR"


class ImageHeaderError(ValueError):
    """A header that cannot be read, or a format we cannot size before decoding; one line."""


@dataclass(frozen=True)
class ImageSize:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_image_size(data: bytes) -> ImageSize:
    """The size the header of the encoded image `data` declares (what a decoder allocates)."""
    try:
        size = _dispatch(data)
    except (struct.error, IndexError):
        raise ImageHeaderError("the image header is cut short") from None
    if size.width <= 0 or size.height <= 0:
        raise ImageHeaderError(f"the {size.format} header says {size.width}×{size.height} pixels")
    return size


def _dispatch(data: bytes) -> ImageSize:
    """The size from the header of the first format (in `_FORMATS` order) whose signature `data` has."""
    for has_signature, read_size in _FORMATS:
        if has_signature(data):
            return read_size(data)
    raise ImageHeaderError(f"no {KNOWN_FORMATS} header (a size must be known before decoding)")


def _png(data: bytes) -> ImageSize:
    if data[12:16] != b"IHDR":
        raise ImageHeaderError("PNG without an IHDR chunk first")
    width, height = struct.unpack_from(">II", data, 16)
    return ImageSize("PNG", width, height)


# the start-of-frame markers: baseline, extended, progressive, lossless, arithmetic and hierarchical
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageSize:
    """The first frame header (SOFn), walking the segments by their lengths: an EXIF thumbnail
    inside APP1 is skipped whole, never taken for the image."""
    pos = 2
    end = min(len(data), MAX_HEADER_SCAN)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageHeaderError(f"JPEG segment expected at byte {pos}")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("JPEG without a frame header before its scan")
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if height == 0:
                raise ImageHeaderError("JPEG whose height is given only after the scan (DNL) is not supported")
            return ImageSize("JPEG", width, height)
        if length < 2:
            raise ImageHeaderError(f"JPEG segment of length {length} at byte {pos}")
        pos += length
    if end < MAX_HEADER_SCAN:
        raise ImageHeaderError("the image header is cut short")
    raise ImageHeaderError("JPEG without a frame header in its first MiB")


def _bmp(data: bytes) -> ImageSize:
    (dib,) = struct.unpack_from("<I", data, 14)
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
        width, height = struct.unpack_from("<HH", data, 18)
        return ImageSize("BMP", width, height)
    width, height = struct.unpack_from("<ii", data, 18)
    return ImageSize("BMP", width, abs(height))  # a negative height: rows stored top-down


def _gif(data: bytes) -> ImageSize:
    """The logical screen, widened to the first image when that image reaches past it."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)  # after the global colour table
    end = min(len(data), MAX_HEADER_SCAN)
    while pos < end:
        block = data[pos]
        if block == 0x2C:  # image descriptor
            left, top, w, h = struct.unpack_from("<HHHH", data, pos + 1)
            return ImageSize("GIF", max(width, left + w), max(height, top + h))
        if block != 0x21:  # not an extension: the trailer, or garbage
            break
        pos += 2
        while pos < end and data[pos] != 0:  # sub-blocks, each prefixed with its length
            pos += data[pos] + 1
        pos += 1
    return ImageSize("GIF", width, height)


def _webp(data: bytes) -> ImageSize:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageHeaderError("WebP (lossy) without its frame start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageSize("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ImageHeaderError("WebP (lossless) without its signature byte")
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageSize("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        if len(data) < 30:
            raise IndexError
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageSize("WebP", width, height)
    raise ImageHeaderError(f"WebP with an unknown first chunk {chunk!r}")


# TIFF field types that can hold ImageWidth/ImageLength: SHORT, LONG, LONG8 (BigTIFF)
_TIFF_INT = {3: "H", 4: "I", 16: "Q"}


def _tiff(data: bytes) -> ImageSize:
    """ImageWidth (256) and ImageLength (257) from the first IFD: the page imdecode reads."""
    e = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        (ifd,) = struct.unpack_from(e + "Q", data, 8)
        count_fmt, entry_size, count_size, value_at = "Q", 20, 8, 12
    else:
        (ifd,) = struct.unpack_from(e + "I", data, 4)
        count_fmt, entry_size, count_size, value_at = "H", 12, 2, 8
    if ifd >= len(data):  # libtiff writes the directory after the pixels: anywhere in the file
        raise ImageHeaderError(f"TIFF whose first directory is at byte {ifd}, past its end")
    (entries,) = struct.unpack_from(e + count_fmt, data, ifd)
    found: dict[int, int] = {}
    for i in range(min(entries, 4096)):
        at = ifd + count_size + i * entry_size
        tag, kind = struct.unpack_from(e + "HH", data, at)
        if tag in (256, 257) and kind in _TIFF_INT:
            (found[tag],) = struct.unpack_from(e + _TIFF_INT[kind], data, at + value_at)
        if len(found) == 2:
            return ImageSize("TIFF", found[256], found[257])
    raise ImageHeaderError("TIFF without ImageWidth and ImageLength in its first directory")


def _sun(data: bytes) -> ImageSize:
    width, height = struct.unpack_from(">II", data, 4)
    return ImageSize("Sun raster", width, height)


_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*([^\s#]+)")


def _pnm(data: bytes) -> ImageSize:
    head = data[:4096]
    pos = 2
    values: list[int] = []
    for _ in range(2):
        m = _TOKEN.match(head, pos)
        if m is None or not m.group(1).isdigit() or len(m.group(1)) > 10:
            raise ImageHeaderError(f"PNM ({data[:2].decode()}) header without a width and height")
        values.append(int(m.group(1)))
        pos = m.end()
    return ImageSize("PFM" if data[1:2] in (b"F", b"f") else "PNM", values[0], values[1])


def _pam(data: bytes) -> ImageSize:
    head = data[: min(len(data), 4096)]
    found: dict[bytes, int] = {}
    for line in head.split(b"\n")[1:]:
        words = line.split()
        if words[:1] == [b"ENDHDR"]:
            break
        if len(words) == 2 and words[0] in (b"WIDTH", b"HEIGHT") and words[1].isdigit() and len(words[1]) <= 10:
            found[words[0]] = int(words[1])
    if len(found) != 2:
        raise ImageHeaderError("PAM header without WIDTH and HEIGHT")
    return ImageSize("PAM", found[b"WIDTH"], found[b"HEIGHT"])


_HDR_SIZE = re.compile(rb"^([-+])([XY]) (\d{1,10}) ([-+])([XY]) (\d{1,10})$", re.MULTILINE)


def _hdr(data: bytes) -> ImageSize:
    head = data[: min(len(data), 65536)]
    blank = head.find(b"\n\n")
    m = _HDR_SIZE.match(head, blank + 2) if blank >= 0 else None
    if m is None or m.group(2) == m.group(5):
        raise ImageHeaderError("Radiance HDR header without its resolution line")
    sizes = {m.group(2): int(m.group(3)), m.group(5): int(m.group(6))}
    return ImageSize("Radiance HDR", sizes[b"X"], sizes[b"Y"])


# (signature test, size reader) per format, tried in this order
_FORMATS: tuple[tuple[Callable[[bytes], bool], Callable[[bytes], ImageSize]], ...] = (
    (lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    (lambda d: d.startswith(b"\xff\xd8"), _jpeg),
    (lambda d: d.startswith(b"BM"), _bmp),
    (lambda d: d.startswith((b"GIF87a", b"GIF89a")), _gif),
    (lambda d: d.startswith(b"RIFF") and d[8:12] == b"WEBP", _webp),
    (lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    (lambda d: d[:1] == b"P" and d[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6", b"F", b"f"), _pnm),
    (lambda d: d.startswith(b"P7"), _pam),
    (lambda d: d.startswith(b"\x59\xa6\x6a\x95"), _sun),
    (lambda d: d.startswith((b"#?RADIANCE", b"#?RGBE")), _hdr),
)
