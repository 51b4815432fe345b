"""`wav`: audio files cut into windows for audio classifiers (BirdNET-style 3 s at 48 kHz).

A file, a folder or a glob of WAV files, in name order, optionally looping. Each file is
read in chunks (see `wav_reader`), mixed down to mono, resampled to the model's rate with
soxr when it differs, and cut into windows of the model's input length every `wav_hop_s`.
A window is a Frame whose `values` are the samples scaled as the model takes them
("float": [-1, 1]; "int16": [-32768, 32767]), lent from a few preallocated slots until
`release()`. Its `source` names the file and where the window starts ("birds.wav@3.0s").

A file that cannot be used (not a WAV, an unsupported encoding, a broken header) is a
SourceProblem naming it and why; the source goes on with the next file. A truncated file
gives its windows up to the cut, then a SourceProblem saying so.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bounded import quote_part
from edge_agent.config.source import WavOptions
from edge_agent.errors import SourceError
from edge_agent.sources.base import MIN_LENT, Frame, SourceProblem, Stamp
from edge_agent.sources.wav_reader import WavFormatError, WavReader

log = logging.getLogger(__name__)

WAV_SUFFIXES = (".wav", ".wave")
SCALES = {"float": 1.0, "int16": 32768.0}
CHUNK_FRAMES = 16384
# the most samples one resampler call may give: a chunk is fed in pieces small enough for this
# whatever the ratio, so the resampler's output and the fifo stay bounded (a file at 100 Hz
# resampled to 384 kHz would otherwise turn one 16,384-frame chunk into 63 M samples, 250 MB)
RESAMPLED_MAX = 4 * CHUNK_FRAMES
_NO_SAMPLES = np.zeros(0, dtype=np.float32)


def list_wavs(pattern: str) -> list[Path]:
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in WAV_SUFFIXES and f.is_file()]
    elif p.is_file():
        files = [p]
    else:
        # a pattern may be absolute ("/srv/audio/*.wav"), which Path.glob does not take
        files = [Path(f) for f in glob.glob(str(p), recursive=True)]  # noqa: PTH207
        files = [f for f in files if f.suffix.lower() in WAV_SUFFIXES and f.is_file()]
    return sorted(files)


def seconds_label(t: float) -> str:
    """3.0 → "3.0", 0.25 → "0.25": at least one decimal, at most three."""
    s = f"{t:.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def window_length(opts: WavOptions, input_length: int | None) -> int:
    rate = opts.sample_rate
    if opts.window_s is not None:
        n = round(opts.window_s * rate)
        if n < 1:
            raise SourceError(f"source.wav_window_s = {opts.window_s:g} s is less than one sample at {rate} Hz")
        if input_length is not None and n != input_length:
            raise SourceError(
                f"source.wav_window_s = {opts.window_s:g} s is {n} samples at {rate} Hz, "
                f"but the model takes {input_length} samples ({input_length / rate:g} s)"
            )
        return n
    if input_length is None:
        raise SourceError("source.wav_window_s: needed when the model's input length is not known")
    return input_length


class _Fifo:
    """Resampled samples waiting to be cut into windows; compacted in place, grown rarely."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(capacity, dtype=np.float32)
        self.start = 0
        self.end = 0
        self.skip = 0  # samples still to drop (a hop longer than the window)

    @property
    def size(self) -> int:
        return self.end - self.start

    def clear(self) -> None:
        self.start = self.end = self.skip = 0

    def push(self, x: npt.NDArray[np.float32]) -> None:
        if self.skip:
            k = min(self.skip, x.size)
            x = x[k:]
            self.skip -= k
        m = x.size
        if m == 0:
            return
        if self.end + m > self.buf.size:
            live = self.size
            if 2 * (live + m) > self.buf.size or self.start < live:
                grown = np.empty(2 * (live + m), dtype=np.float32)
                grown[:live] = self.buf[self.start : self.end]
                self.buf = grown
            else:
                # start >= live: source and destination do not overlap, so no temporary copy
                self.buf[:live] = self.buf[self.start : self.end]
            self.start, self.end = 0, live
        self.buf[self.end : self.end + m] = x
        self.end += m

    def advance(self, n: int) -> None:
        if n <= self.size:
            self.start += n
        else:
            self.skip += n - self.size
            self.start = self.end


class WavSource:
    def __init__(self, opts: WavOptions, *, input_length: int | None = None) -> None:
        self.name = f"wav:{opts.path}"
        self._rate = opts.sample_rate
        self._window = window_length(opts, input_length)
        self._hop = max(1, round(opts.hop_s * self._rate)) if opts.hop_s is not None else self._window
        self._scale = SCALES[opts.scale]
        self._pad_last = opts.pad_last
        self._loop = opts.loop
        self._files = list_wavs(opts.path)
        if not self._files:
            raise SourceError(f"source.path: no WAV files match {opts.path}")
        self._stamp = Stamp()
        # one slot more than a caller may hold, so a free one is always there
        self._slots = [np.zeros(self._window, dtype=np.float64) for _ in range(MIN_LENT + 1)]
        self._free = list(range(len(self._slots)))
        self._lent: dict[int, int] = {}  # id(values) → slot index
        self._fifo = _Fifo(2 * (self._window + 4 * CHUNK_FRAMES))
        self._next = 0
        self._reader: WavReader | None = None
        self._resampler: Any = None  # soxr.ResampleStream for the current file's rate
        self._resampler_rate = 0
        self._piece = CHUNK_FRAMES  # input samples per resampler call (see RESAMPLED_MAX)
        self._backlog = _NO_SAMPLES  # the rest of a chunk read, not yet resampled
        self._file_windows = 0  # windows cut from the current file
        self._file_ended = False  # the current file's samples are all in the fifo
        self._pass_windows = 0  # windows cut in this pass over the files
        self._noted: set[Path] = set()

    # ---- files --------------------------------------------------------------------------
    def _open_next(self) -> SourceProblem | bool:
        """Open the next file: True when one is open, False when the list is done, or a problem."""
        if self._next >= len(self._files):
            if not self._loop:
                return False
            if self._pass_windows == 0:
                raise SourceError(f"source.path: none of the {len(self._files)} WAV file(s) gave a window")
            self._next = 0
            self._pass_windows = 0
        path = self._files[self._next]
        self._next += 1
        try:
            reader = WavReader(path, chunk_frames=CHUNK_FRAMES)
        except WavFormatError as err:
            return SourceProblem(path.name, str(err))
        info = reader.info
        if info.rate != self._rate:
            problem = self._prepare_resampler(path, info.rate)
            if problem is not None:
                reader.close()
                return problem
        if path not in self._noted:
            self._noted.add(path)
            notes = [f"{info.encoding}, {info.rate} Hz, {info.channels} channel(s), {info.frames / info.rate:.3f} s"]
            if info.channels > 1:
                notes.append(f"{info.channels} channels mixed down to mono")
            if info.rate != self._rate:
                notes.append(f"resampled to {self._rate} Hz")
            log.info("%s: %s", path.name, "; ".join(notes))
        self._reader = reader
        self._backlog = _NO_SAMPLES
        self._fifo.clear()
        self._file_windows = 0
        self._file_ended = False
        return True

    def _prepare_resampler(self, path: Path, rate: int) -> SourceProblem | None:
        # soxr gives about len × ratio samples per call, plus its filter's delay when flushed
        self._piece = max(1, min(CHUNK_FRAMES, RESAMPLED_MAX * rate // self._rate))
        if self._resampler is not None and self._resampler_rate == rate:
            self._resampler.clear()
            return None
        try:
            import soxr  # noqa: PLC0415  (optional: only files at another rate need it)
        except ImportError:
            return SourceProblem(
                path.name,
                f"is at {rate} Hz but the model takes {self._rate} Hz, and resampling needs the soxr package "
                "(pip install 'edge-agent[audio]')",
            )
        try:
            self._resampler = soxr.ResampleStream(rate, self._rate, 1, dtype="float32", quality="HQ")
        except (ValueError, RuntimeError, MemoryError) as err:
            self._resampler = None
            return SourceProblem(path.name, f"cannot resample {rate} Hz to {self._rate} Hz: {quote_part(str(err))}")
        self._resampler_rate = rate
        return None

    def _finish_file(self) -> SourceProblem | None:
        """Close the current file; a problem when it was truncated or too short for a window."""
        reader = self._reader
        assert reader is not None
        self._reader = None
        reader.close()
        info, name = reader.info, reader.path.name
        if info.truncated:
            declared = info.declared_bytes // info.block / info.rate
            return SourceProblem(
                name,
                f"truncated: the header declares {declared:.3f} s of audio, the file holds {info.frames / info.rate:.3f} s"
                + (" (the windows before the cut were used)" if self._file_windows else ""),
            )
        if self._file_windows == 0:
            if info.frames == 0:
                return SourceProblem(name, "holds no audio samples")
            return SourceProblem(
                name,
                f"is {info.frames / info.rate:.3f} s long, shorter than one {self._window / self._rate:g} s window "
                "(set source.wav_pad_last = true to pad it)",
            )
        return None

    # ---- samples ------------------------------------------------------------------------
    def _pull(self) -> SourceProblem | None:
        """Move one chunk of the current file into the fifo (resampled); at the end, flush."""
        reader = self._reader
        assert reader is not None
        resampling = reader.info.rate != self._rate
        if resampling and self._backlog.size:
            # one piece at a time: read() cuts windows between pieces, so the fifo stays small
            piece, self._backlog = self._backlog[: self._piece], self._backlog[self._piece :]
            self._fifo.push(self._resampler.resample_chunk(piece))
            return None
        try:
            chunk = reader.read()
        except Exception as err:  # noqa: BLE001 - whatever it is, it is this file's problem
            if isinstance(err, WavFormatError):
                msg = str(err)
            elif isinstance(err, OSError):
                msg = f"cannot read: {err.strerror or err}"
            else:
                msg = f"cannot read: {type(err).__name__}: {quote_part(str(err))}"
            self._reader = None
            reader.close()
            return SourceProblem(reader.path.name, msg + " (the rest of the file was skipped)")
        if chunk is None:
            self._file_ended = True
            if resampling:
                self._fifo.push(self._resampler.resample_chunk(_NO_SAMPLES, last=True))
            return None
        if resampling:
            self._backlog = chunk  # a view of the reader's buffer, used up before its next read()
            return self._pull()
        self._fifo.push(chunk)
        return None

    def _emit(self, name: str, *, pad: bool = False) -> Frame:
        if not self._free:
            # a caller holding more than MIN_LENT frames: lend a new slot rather than overwrite
            self._slots.append(np.zeros(self._window, dtype=np.float64))
            self._free.append(len(self._slots) - 1)
        idx = self._free.pop()
        slot = self._slots[idx]
        fifo = self._fifo
        n = min(self._window, fifo.size)
        np.multiply(fifo.buf[fifo.start : fifo.start + n], self._scale, out=slot[:n])
        if pad:
            slot[n:] = 0.0
        offset = self._file_windows * self._hop / self._rate
        fifo.advance(self._hop)
        self._file_windows += 1
        self._pass_windows += 1
        self._lent[id(slot)] = idx
        seq, ts, mono = self._stamp.next()
        return Frame(seq=seq, ts=ts, mono=mono, source=f"{name}@{seconds_label(offset)}s", values=slot)

    def read(self) -> Frame | SourceProblem | None:
        while True:
            if self._reader is None:
                opened = self._open_next()
                if opened is False:
                    return None
                if isinstance(opened, SourceProblem):
                    return opened
                continue
            name = self._reader.path.name
            if self._fifo.size >= self._window:
                return self._emit(name)
            if not self._file_ended:
                problem = self._pull()
                if problem is not None:
                    return problem
                continue
            # the file is used up: a last partial window holding samples no window had yet
            seen = 0 if self._file_windows == 0 else max(0, self._window - self._hop)
            if self._pad_last and self._fifo.size > seen:
                frame = self._emit(name, pad=True)
                self._fifo.clear()
                return frame
            problem = self._finish_file()
            if problem is not None:
                return problem

    def release(self, frame: Frame) -> None:
        idx = self._lent.pop(id(frame.values), None)
        if idx is not None:
            self._free.append(idx)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._backlog = _NO_SAMPLES
        self._files = []
