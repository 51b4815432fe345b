"""A small reader of RIFF/WAVE files: PCM 8/16/24/32-bit and IEEE float 32/64, plain or
WAVE_FORMAT_EXTENSIBLE, any number of channels, read in chunks as float32 mono.

Written here rather than taken from `wave` (which reads neither float nor, before Python
3.12, extensible files) or `soundfile` (which needs the libsndfile system library). It parses
files it cannot trust: every size in a header is checked against the file, and anything it
does not understand is a `WavFormatError` with a one-line reason.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from edge_agent.bounded import describe_kind

PCM = 0x0001
IEEE_FLOAT = 0x0003
EXTENSIBLE = 0xFFFE
# the formats a recorder may write that this reader does not decode, named in the error
_KNOWN = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
}
# sane ranges for a header's values: a header is a claim, and what it claims sizes buffers and
# the resampler's work (a file "at 1 Hz" resampled to 48 kHz is 48,000 samples out per sample in)
MAX_CHANNELS = 64
MIN_RATE = 100  # below any audio; slow sensor logs written as WAV (vibration, seismic) are 100 Hz and up
MAX_RATE = 1_000_000  # above any recorder (ultrasonic bat detectors record at 250-500 kHz)
_FLOAT_DTYPES = {32: "<f4", 64: "<f8"}
_INT_DTYPES = {8: "u1", 16: "<i2", 32: "<i4"}


class WavFormatError(Exception):
    """The file is not a WAV this reader decodes; the message says why, in one line."""


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    bits: int
    is_float: bool
    data_offset: int
    data_bytes: int  # what the file really holds, whole sample frames only
    declared_bytes: int  # what the data chunk's header says

    @property
    def block(self) -> int:
        return self.channels * self.bits // 8

    @property
    def frames(self) -> int:
        return self.data_bytes // self.block

    @property
    def truncated(self) -> bool:
        return self.declared_bytes > self.data_bytes + self.block - 1

    @property
    def encoding(self) -> str:
        return f"{'float' if self.is_float else 'uint' if self.bits == 8 else 'int'}{self.bits}"


def _format_name(tag: int) -> str:
    return f"format 0x{tag:04X}" + (f" ({_KNOWN[tag]})" if tag in _KNOWN else "")


def _check_channels_and_rate(channels: int, rate: int) -> None:
    if channels == 0:
        raise WavFormatError("the header says 0 channels")
    if channels > MAX_CHANNELS:
        raise WavFormatError(f"the header says {channels} channels (at most {MAX_CHANNELS} are read)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WavFormatError(
            f"the header says a sample rate of {rate} Hz (a recording's is from {MIN_RATE} to {MAX_RATE} Hz)"
        )


# the sample formats read: format tag → (its name, the sample sizes read, as the error says them)
_SAMPLE_BITS = {PCM: ("PCM", (8, 16, 24, 32), "8, 16, 24 or 32 bits"), IEEE_FLOAT: ("float", (32, 64), "32 or 64 bits")}


def _check_sample_format(tag: int, bits: int) -> None:
    if tag not in _SAMPLE_BITS:
        raise WavFormatError(f"{_format_name(tag)} is not supported: convert it to PCM or float WAV")
    name, sizes, said = _SAMPLE_BITS[tag]
    if bits not in sizes:
        raise WavFormatError(f"{bits}-bit {name} is not supported ({said})")


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    """(format tag, channels, rate, bits) from a fmt chunk, the extensible sub-format resolved."""
    if len(body) < 16:
        raise WavFormatError(f"fmt chunk is {len(body)} bytes, shorter than the 16 a WAV header needs")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == EXTENSIBLE:
        if len(body) < 40:
            raise WavFormatError("WAVE_FORMAT_EXTENSIBLE header is cut short (no sub-format)")
        # the sub-format GUID starts with the plain format tag; fewer valid bits than the
        # container (20 in 24) need nothing special: the unused low bits are zero
        tag = struct.unpack_from("<H", body, 24)[0]
    _check_channels_and_rate(channels, rate)
    _check_sample_format(tag, bits)
    if block_align != channels * bits // 8:
        raise WavFormatError(
            f"block align {block_align} does not match {channels} channel(s) of {bits} bits ({channels * bits // 8})"
        )
    return tag, channels, rate, bits


def read_header(fh: BinaryIO, size: int) -> WavInfo:
    """Walk the RIFF chunks up to `data`; `size` is the file's length in bytes."""
    _check_riff(fh.read(12))
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            raise WavFormatError("no data chunk" if fmt is not None else "no fmt chunk")
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        pos += 8
        if cid == b"data":
            return _data_info(fmt, pos, csize, size)
        if cid == b"fmt ":
            fmt = _parse_fmt(_read_fmt_body(fh, csize))
        else:
            fh.seek(csize, 1)
        pos += csize + (csize & 1)  # chunks are padded to an even length
        if pos > size:
            raise WavFormatError("no data chunk" if fmt is not None else "no fmt chunk")
        fh.seek(pos)


def _check_riff(head: bytes) -> None:
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
        raise WavFormatError("not a WAV file (no RIFF/WAVE header)")
    if head[:4] != b"RIFF":
        raise WavFormatError(f"{head[:4].decode()} WAV files are not supported (only little-endian RIFF)")


def _read_fmt_body(fh: BinaryIO, csize: int) -> bytes:
    if csize > 1024:
        raise WavFormatError(f"fmt chunk of {csize} bytes is implausibly large")
    body = fh.read(csize)
    if len(body) < csize:
        raise WavFormatError("the file ends inside the fmt chunk")
    return body


def _data_info(fmt: tuple[int, int, int, int] | None, pos: int, csize: int, size: int) -> WavInfo:
    """The data chunk of `csize` declared bytes at `pos`, as much of it as a file of `size` bytes holds."""
    if fmt is None:
        raise WavFormatError("data chunk comes before the fmt chunk")
    tag, channels, rate, bits = fmt
    block = channels * bits // 8
    held = max(0, min(csize, size - pos))
    return WavInfo(
        rate=rate,
        channels=channels,
        bits=bits,
        is_float=tag == IEEE_FLOAT,
        data_offset=pos,
        data_bytes=held - held % block,
        declared_bytes=csize,
    )


class WavReader:
    """Reads one file's samples as float32 mono in [-1, 1] (channels averaged), in chunks."""

    def __init__(self, path: Path, *, chunk_frames: int = 16384) -> None:
        self.path = path
        try:
            # O_NONBLOCK: a FIFO (or a device) under a .wav name must not block the open; it is
            # then refused for what it is
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise WavFormatError(f"cannot open: {err.strerror or err}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise WavFormatError(f"is {describe_kind(st.st_mode)}, not a regular file")
        self._fh: io.BufferedReader = os.fdopen(fd, "rb")
        try:
            size = st.st_size
            self.info = read_header(self._fh, size)
            self._fh.seek(self.info.data_offset)
        except (WavFormatError, OSError) as err:
            self._fh.close()
            if isinstance(err, OSError):
                raise WavFormatError(f"cannot read: {err.strerror or err}") from None
            raise
        info = self.info
        self._left = info.data_bytes
        self._chunk_frames = chunk_frames
        self._raw = bytearray(chunk_frames * info.block)
        self._mono = np.empty(chunk_frames, dtype=np.float32)
        self._wide = np.empty((chunk_frames, info.channels), dtype=np.float32)
        if info.is_float:
            self._dtype: np.dtype[np.generic] = np.dtype(_FLOAT_DTYPES[info.bits])
        elif info.bits == 24:
            self._dtype = np.dtype("<i4")  # assembled from three bytes
            self._i24 = np.empty((chunk_frames * info.channels, 4), dtype=np.uint8)
        else:
            self._dtype = np.dtype(_INT_DTYPES[info.bits])
        self._offset = {8: -128.0}.get(info.bits, 0.0) if not info.is_float else 0.0
        self._scale = 1.0 if info.is_float else 1.0 / float(2 ** (info.bits - 1))

    def read(self) -> npt.NDArray[np.float32] | None:
        """The next chunk of mono samples (a view into a buffer the next call overwrites), or
        None at the end of the data. Raises WavFormatError for non-finite float samples."""
        if self._left <= 0:
            return None
        block = self.info.block
        want = min(self._left, self._chunk_frames * block)
        view = memoryview(self._raw)[:want]
        got = self._fh.readinto(view)
        got -= got % block
        if got <= 0:
            self._left = 0
            return None
        self._left -= got
        n = got // block
        ch = self.info.channels
        raw = view[:got]
        if self.info.bits == 24:
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
            # the three little-endian bytes go to the top of an int32: sign kept, low byte zero
            i24 = self._i24[: n * ch]
            i24[:, 0] = 0
            i24[:, 1:] = b
            ints = i24.view("<i4").reshape(n, ch)
            scale = 1.0 / 2147483648.0
        else:
            ints = np.frombuffer(raw, dtype=self._dtype).reshape(n, ch)
            scale = self._scale
        wide = self._wide[:n]
        with np.errstate(over="ignore"):  # float64 past float32's range becomes Inf, caught below
            np.copyto(wide, ints, casting="unsafe")
        if self._offset:
            wide += self._offset
        mono = self._mono[:n]
        if ch == 1:
            np.copyto(mono, wide[:, 0])
        else:
            np.sum(wide, axis=1, out=mono)
            scale /= ch
        if scale != 1.0:
            mono *= np.float32(scale)
        if self.info.is_float and not np.isfinite(np.sum(mono, dtype=np.float64)):
            bad = int(np.count_nonzero(~np.isfinite(mono)))
            at = (self.info.frames - (self._left + got) // block) / self.info.rate
            raise WavFormatError(f"{bad} NaN/Inf sample(s) (or past float32's range) in the chunk at {at:.3f} s")
        return mono

    def close(self) -> None:
        self._fh.close()
