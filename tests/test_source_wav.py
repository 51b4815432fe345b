"""The `wav` source: real WAV files written here (Python's `wave` for PCM, a RIFF writer of
our own for float, extensible and broken files), real soxr resampling, the bundled audio
classifier through the real agent and mosquitto."""

from __future__ import annotations

import json
import math
import struct
import sys
import tracemalloc
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import INTERPRETER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_helpers import Collector, run_agent, write_config
from pydantic import ValidationError

from edge_agent.broker import LocalBroker
from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError
from edge_agent.preprocess import Prepared, Preprocessor, VectorPlan
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources import Frame, SourceProblem, open_source
from edge_agent.sources.base import MIN_LENT
from edge_agent.sources.wav_reader import WavFormatError, WavReader
from edge_agent.sources.wav_source import WavSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import audio_synth

PROPERTY = settings(deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------
# writing WAV files


def write_pcm(path: Path, samples: np.ndarray, rate: int, sampwidth: int) -> None:
    """Integer samples (n, channels) as PCM with Python's `wave` (8-bit is unsigned)."""
    samples = samples.reshape(len(samples), -1)
    if sampwidth == 3:
        # 24-bit: the low three bytes of each little-endian int32
        raw = samples.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    else:
        dtype = {1: "u1", 2: "<i2", 4: "<i4"}[sampwidth]
        raw = samples.astype(dtype).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        w.writeframes(raw)


SUBFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_* after the tag


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, *, extensible: bool = False) -> bytes:
    block = channels * bits // 8
    if extensible:
        return struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + (
            struct.pack("<H", tag) + SUBFORMAT_TAIL
        )
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def riff(*chunks: tuple[bytes, bytes], declared: dict[bytes, int] | None = None) -> bytes:
    """A RIFF/WAVE file from (id, body) chunks; `declared` overrides a chunk's size field."""
    body = b"WAVE"
    for cid, data in chunks:
        size = (declared or {}).get(cid, len(data))
        body += cid + struct.pack("<I", size) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_float(path: Path, samples: np.ndarray, rate: int, *, extensible: bool = False) -> None:
    samples = samples.reshape(len(samples), -1)
    bits = samples.dtype.itemsize * 8
    data = samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(
        riff((b"fmt ", fmt_chunk(3, samples.shape[1], rate, bits, extensible=extensible)), (b"data", data))
    )


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def int16(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32767).astype(np.int16)


def wav_cfg(path: Path | str, **kw: Any) -> SourceConfig:
    base: dict[str, Any] = {"kind": "wav", "path": str(path), "wav_sample_rate": 48000, "wav_window_s": 0.1}
    return SourceConfig(**{**base, **kw})


def source(path: Path | str, *, input_length: int | None = None, **kw: Any) -> WavSource:
    src = open_source(wav_cfg(path, **kw), input_length=input_length)
    assert isinstance(src, WavSource)
    return src


def drain(src: WavSource, limit: int = 1000) -> list[Frame | SourceProblem]:
    out: list[Frame | SourceProblem] = []
    for _ in range(limit):
        item = src.read()
        if item is None:
            return out
        if isinstance(item, Frame):
            # keep a copy: the frame's buffer goes back to the source
            out.append(Frame(item.seq, item.ts, item.mono, item.source, values=np.copy(item.values)))
            src.release(item)
        else:
            out.append(item)
    raise AssertionError(f"source did not end within {limit} reads")


def frames_of(items: list[Frame | SourceProblem]) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame)]


def problems_of(items: list[Frame | SourceProblem]) -> list[SourceProblem]:
    return [i for i in items if isinstance(i, SourceProblem)]


def values(f: Frame) -> np.ndarray:
    assert f.values is not None
    return f.values


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec)) * rate / len(x)


# ---------------------------------------------------------------------------------------
# windows, scaling, formats


def test_int16_mono_windows_length_hop_and_exact_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32768, 48000 // 2, dtype=np.int64)  # 0.5 s
    write_pcm(tmp_path / "a.wav", samples, 48000, 2)
    frames = frames_of(drain(source(tmp_path / "a.wav", wav_window_s=0.1, wav_hop_s=0.05)))
    window, hop = 4800, 2400
    # windows start every hop while a whole window fits: 0, 2400, ..., 19200
    assert len(frames) == (len(samples) - window) // hop + 1 == 9
    assert [f.source for f in frames[:3]] == ["a.wav@0.0s", "a.wav@0.05s", "a.wav@0.1s"]
    assert frames[-1].source == "a.wav@0.4s"
    for k, f in enumerate(frames):
        assert values(f).dtype == np.float64 and values(f).shape == (window,)
        np.testing.assert_array_equal(values(f), samples[k * hop : k * hop + window] / 32768.0)
    assert [f.seq for f in frames] == list(range(1, 10))


def test_int16_scale_gives_the_integer_samples(tmp_path: Path) -> None:
    samples = np.array([-32768, -1, 0, 1, 32767] * 960, dtype=np.int64)
    write_pcm(tmp_path / "a.wav", samples, 48000, 2)
    (f,) = frames_of(drain(source(tmp_path / "a.wav", wav_scale="int16")))
    np.testing.assert_array_equal(values(f), samples[:4800].astype(np.float64))


@pytest.mark.parametrize(("sampwidth", "full"), [(1, 128), (2, 32768), (3, 8388608), (4, 2147483648)])
def test_pcm_widths_scale_to_minus_one_one(tmp_path: Path, sampwidth: int, full: int) -> None:
    rng = np.random.default_rng(sampwidth)
    if sampwidth == 1:
        raw = rng.integers(0, 256, 4800)
        expected = (raw - 128) / 128.0
    else:
        raw = rng.integers(-full, full, 4800)
        raw[:2] = [-full, full - 1]  # the extremes
        expected = raw / float(full)
    write_pcm(tmp_path / "a.wav", raw, 48000, sampwidth)
    (f,) = frames_of(drain(source(tmp_path / "a.wav")))
    # float32 holds 24 bits of mantissa: exact up to 24-bit, within 2^-24 relative for 32-bit
    np.testing.assert_allclose(values(f), expected, rtol=0, atol=0 if sampwidth < 4 else 2**-24)
    assert values(f).min() == -1.0 and values(f).max() <= 1.0  # int32 full scale rounds to 1.0 in float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav_plain_and_extensible(tmp_path: Path, dtype: type, extensible: bool) -> None:
    x = tone(440.0, 0.2, 48000, amp=0.9).astype(dtype)
    x[5] = 1.5  # float WAVs may go past full scale: kept as it is
    write_float(tmp_path / "f.wav", x, 48000, extensible=extensible)
    frames = frames_of(drain(source(tmp_path / "f.wav")))
    assert len(frames) == 2
    np.testing.assert_array_equal(values(frames[0]), x[:4800].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(values(frames[1]), x[4800:9600].astype(np.float32).astype(np.float64))


def test_extensible_pcm_24(tmp_path: Path) -> None:
    raw = np.arange(-2400, 2400) * 1000
    data = raw.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    (tmp_path / "e.wav").write_bytes(riff((b"fmt ", fmt_chunk(1, 1, 48000, 24, extensible=True)), (b"data", data)))
    (f,) = frames_of(drain(source(tmp_path / "e.wav")))
    np.testing.assert_array_equal(values(f), raw / 8388608.0)


def test_stereo_is_mixed_down_to_mono(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    left, right = int16(tone(500, 0.1, 48000)), int16(tone(3000, 0.1, 48000, amp=0.25))
    write_pcm(tmp_path / "s.wav", np.stack([left, right], axis=1), 48000, 2)
    with caplog.at_level("INFO", logger="edge_agent.sources.wav_source"):
        (f,) = frames_of(drain(source(tmp_path / "s.wav")))
    np.testing.assert_allclose(values(f), (left.astype(np.float64) + right) / 2 / 32768.0, rtol=0, atol=1e-7)
    assert "2 channels mixed down to mono" in caplog.text


def test_hop_longer_than_the_window_skips_between_windows(tmp_path: Path) -> None:
    samples = np.arange(48000) % 30000
    write_pcm(tmp_path / "a.wav", samples, 48000, 2)
    frames = frames_of(drain(source(tmp_path / "a.wav", wav_window_s=0.1, wav_hop_s=0.25)))
    assert [f.source for f in frames] == ["a.wav@0.0s", "a.wav@0.25s", "a.wav@0.5s", "a.wav@0.75s"]
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(values(f), samples[k * 12000 : k * 12000 + 4800] / 32768.0)


def test_pad_last_zero_pads_the_tail_only_when_it_holds_new_samples(tmp_path: Path) -> None:
    samples = np.arange(1, 11000)  # 2 whole windows of 4800 and 1399 more samples
    write_pcm(tmp_path / "a.wav", samples, 48000, 2)
    assert len(frames_of(drain(source(tmp_path / "a.wav")))) == 2
    frames = frames_of(drain(source(tmp_path / "a.wav", wav_pad_last=True)))
    assert len(frames) == 3
    np.testing.assert_array_equal(values(frames[2])[:1399], samples[9600:] / 32768.0)
    assert not values(frames[2])[1399:].any()
    # a file that ends exactly on a window has no new samples left: nothing to pad
    write_pcm(tmp_path / "b.wav", np.arange(1, 9601), 48000, 2)
    assert len(frames_of(drain(source(tmp_path / "b.wav", wav_pad_last=True)))) == 2
    # with 50 % overlap, the tail after the last whole window (ending at 9600) is 1399 new samples
    frames = frames_of(drain(source(tmp_path / "a.wav", wav_pad_last=True, wav_hop_s=0.05)))
    assert [f.source for f in frames][-2:] == ["a.wav@0.1s", "a.wav@0.15s"]
    np.testing.assert_array_equal(values(frames[-1])[:3799], samples[7200:] / 32768.0)
    assert not values(frames[-1])[3799:].any()
    # a file shorter than one window gives one padded window
    write_pcm(tmp_path / "c.wav", np.arange(1, 101), 48000, 2)
    (f,) = frames_of(drain(source(tmp_path / "c.wav", wav_pad_last=True)))
    np.testing.assert_array_equal(values(f)[:100], np.arange(1, 101) / 32768.0)


def test_input_length_sets_the_window_and_must_agree(tmp_path: Path) -> None:
    write_pcm(tmp_path / "a.wav", np.zeros(48000, np.int64) + 5, 48000, 2)
    src = open_source(SourceConfig(kind="wav", path=str(tmp_path / "a.wav"), wav_sample_rate=48000), input_length=12000)
    frames = frames_of(drain(src))  # type: ignore[arg-type]
    assert [values(f).size for f in frames] == [12000] * 4
    with pytest.raises(
        SourceError, match=r"wav_window_s = 0.1 s is 4800 samples at 48000 Hz, but the model takes 24000"
    ):
        source(tmp_path / "a.wav", input_length=24000)
    with pytest.raises(SourceError, match="wav_window_s: needed"):
        open_source(SourceConfig(kind="wav", path=str(tmp_path / "a.wav"), wav_sample_rate=48000))


def test_config_needs_the_rate_and_a_known_scale() -> None:
    with pytest.raises(ValidationError, match="wav_sample_rate: required"):
        SourceConfig(kind="wav", path="x.wav")
    with pytest.raises(ValidationError, match="wav_scale"):
        SourceConfig(kind="wav", path="x.wav", wav_sample_rate=48000, wav_scale="int8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="wav_hop_s"):
        SourceConfig(kind="wav", path="x.wav", wav_sample_rate=48000, wav_hop_s=0)
    with pytest.raises(ValidationError, match="wav_bogus"):
        SourceConfig(kind="wav", path="x.wav", wav_sample_rate=48000, wav_bogus=1)  # type: ignore[call-arg]


def test_folder_and_glob_in_name_order(tmp_path: Path) -> None:
    for name, v in (("b.wav", 2), ("a.WAV", 1), ("c.wave", 3)):
        write_pcm(tmp_path / name, np.full(4800, v * 1000), 48000, 2)
    (tmp_path / "notes.txt").write_text("not audio")
    frames = frames_of(drain(source(tmp_path)))
    assert [f.source for f in frames] == ["a.WAV@0.0s", "b.wav@0.0s", "c.wave@0.0s"]
    assert [values(f)[0] * 32768 for f in frames] == [1000, 2000, 3000]
    frames = frames_of(drain(source(tmp_path / "[bc]*")))
    assert [f.source for f in frames] == ["b.wav@0.0s", "c.wave@0.0s"]
    with pytest.raises(SourceError, match="no WAV files match"):
        source(tmp_path / "*.mp3")


# ---------------------------------------------------------------------------------------
# resampling


@pytest.mark.parametrize(("rate", "freq"), [(44100, 1000.0), (44100, 7350.0), (16000, 3000.0), (96000, 12000.0)])
def test_resampling_keeps_a_tones_frequency_and_the_duration(tmp_path: Path, rate: int, freq: float) -> None:
    seconds = 1.0
    write_pcm(tmp_path / "t.wav", int16(tone(freq, seconds, rate)), rate, 2)
    frames = frames_of(drain(source(tmp_path / "t.wav", wav_window_s=0.25)))
    # 1 s at any rate is 48000 samples after resampling: four 0.25 s windows
    assert [f.source for f in frames] == ["t.wav@0.0s", "t.wav@0.25s", "t.wav@0.5s", "t.wav@0.75s"]
    for f in frames:
        assert abs(dominant_hz(values(f), 48000) - freq) <= 4.0  # bins are 4 Hz wide
    # amplitude is kept (0.5 full scale), away from the first window's filter onset
    middle = values(frames[1])
    assert 0.48 <= np.max(np.abs(middle)) <= 0.52


def test_resampled_samples_match_a_direct_soxr_call(tmp_path: Path) -> None:
    soxr = pytest.importorskip("soxr")
    x = int16(tone(440.0, 0.6, 44100) + tone(5000.0, 0.6, 44100, amp=0.2))
    write_pcm(tmp_path / "t.wav", x, 44100, 2)
    frames = frames_of(drain(source(tmp_path / "t.wav")))
    ref = soxr.resample((x / 32768.0).astype(np.float32), 44100, 48000, quality="HQ")
    got = np.concatenate([values(f) for f in frames])
    assert got.size == 4800 * (ref.size // 4800)
    np.testing.assert_allclose(got, ref[: got.size], atol=1e-5)


# ---------------------------------------------------------------------------------------
# bad files


def good(path: Path, value: int = 1000) -> Path:
    write_pcm(path, np.full(4800, value), 48000, 2)
    return path


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "text.wav": (b"this is not audio at all\n" * 4, "not a WAV file"),
    "empty.wav": (b"", "not a WAV file"),
    "cut_header.wav": (riff((b"fmt ", fmt_chunk(1, 1, 48000, 16)))[:30], "ends inside the fmt chunk"),
    "zero_channels.wav": (riff((b"fmt ", fmt_chunk(1, 0, 48000, 16)), (b"data", b"\x00" * 100)), "0 channels"),
    "zero_rate.wav": (riff((b"fmt ", fmt_chunk(1, 1, 0, 16)), (b"data", b"\x00" * 100)), "sample rate of 0 Hz"),
    "adpcm.wav": (riff((b"fmt ", fmt_chunk(2, 1, 48000, 4)), (b"data", b"\x00" * 100)), "Microsoft ADPCM"),
    "ext_mulaw.wav": (
        riff((b"fmt ", fmt_chunk(7, 1, 48000, 8, extensible=True)), (b"data", b"\x00" * 100)),
        "µ-law",
    ),
    "float16.wav": (riff((b"fmt ", fmt_chunk(3, 1, 48000, 16)), (b"data", b"\x00" * 100)), "16-bit float"),
    "pcm12.wav": (riff((b"fmt ", fmt_chunk(1, 1, 48000, 12)), (b"data", b"\x00" * 100)), "12-bit PCM"),
    "data_first.wav": (riff((b"data", b"\x00" * 100), (b"fmt ", fmt_chunk(1, 1, 48000, 16))), "before the fmt"),
    "no_data.wav": (riff((b"fmt ", fmt_chunk(1, 1, 48000, 16)), (b"LIST", b"INFOabcd")), "no data chunk"),
    "rifx.wav": (b"RIFX" + b"\x00" * 4 + b"WAVE" + b"\x00" * 40, "RIFX WAV files are not supported"),
    "silent.wav": (riff((b"fmt ", fmt_chunk(1, 1, 48000, 16)), (b"data", b"")), "holds no audio samples"),
    "short.wav": (riff((b"fmt ", fmt_chunk(1, 1, 48000, 16)), (b"data", b"\x00" * 200)), "shorter than one 0.1 s"),
    "nan.wav": (
        riff((b"fmt ", fmt_chunk(3, 1, 48000, 32)), (b"data", np.array([0.1, math.nan] * 3000, "<f4").tobytes())),
        "NaN/Inf sample",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_a_problem_naming_it_and_the_next_file_is_read(tmp_path: Path, name: str) -> None:
    data, why = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    good(tmp_path / "zz_next.wav")
    items = drain(source(tmp_path))
    (problem,) = problems_of(items)
    assert problem.source == name
    assert why in problem.message, problem.message
    assert "\n" not in problem.message
    assert [f.source for f in frames_of(items)] == ["zz_next.wav@0.0s"]


def test_truncated_data_gives_its_windows_then_says_so(tmp_path: Path) -> None:
    samples = (np.arange(12000) % 1000).astype("<i2")
    data = riff((b"fmt ", fmt_chunk(1, 1, 48000, 16)), (b"data", samples.tobytes()), declared={b"data": 48000 * 2})
    (tmp_path / "cut.wav").write_bytes(data)
    good(tmp_path / "next.wav")
    items = drain(source(tmp_path))
    assert [i.source for i in items] == ["cut.wav@0.0s", "cut.wav@0.1s", "cut.wav", "next.wav@0.0s"]
    problem = items[2]
    assert isinstance(problem, SourceProblem)
    assert "truncated: the header declares 1.000 s of audio, the file holds 0.250 s" in problem.message
    np.testing.assert_array_equal(values(items[1]), samples[4800:9600] / 32768.0)  # type: ignore[arg-type]


def test_a_file_deleted_after_listing_is_a_problem(tmp_path: Path) -> None:
    good(tmp_path / "a.wav")
    good(tmp_path / "b.wav")
    src = source(tmp_path)
    (tmp_path / "a.wav").unlink()
    items = drain(src)
    assert isinstance(items[0], SourceProblem) and items[0].source == "a.wav"
    assert "cannot open" in items[0].message
    assert [f.source for f in frames_of(items)] == ["b.wav@0.0s"]


def test_a_rate_other_than_the_models_without_soxr_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """soxr is an optional dependency (the `audio` extra): without it, only files that need
    resampling are refused. Its absence is simulated by hiding the module from import."""
    monkeypatch.setitem(sys.modules, "soxr", None)
    write_pcm(tmp_path / "a44.wav", np.zeros(44100, np.int64), 44100, 2)
    good(tmp_path / "b48.wav")
    items = drain(source(tmp_path))
    assert isinstance(items[0], SourceProblem)
    assert "is at 44100 Hz but the model takes 48000 Hz" in items[0].message and "soxr" in items[0].message
    assert [f.source for f in frames_of(items)] == ["b48.wav@0.0s"]


# ---------------------------------------------------------------------------------------
# looping and lent buffers


def test_loop_off_ends_loop_on_restarts_with_increasing_seq(tmp_path: Path) -> None:
    good(tmp_path / "a.wav", 1000)
    good(tmp_path / "b.wav", 2000)
    assert len(drain(source(tmp_path))) == 2
    src = source(tmp_path, loop=True)
    items = []
    for _ in range(7):
        item = src.read()
        assert isinstance(item, Frame)
        items.append((item.seq, item.source, values(item)[0] * 32768))
        src.release(item)
    assert [s for _, s, _ in items] == ["a.wav@0.0s", "b.wav@0.0s"] * 3 + ["a.wav@0.0s"]
    assert [v for _, _, v in items] == [1000, 2000] * 3 + [1000]
    assert [q for q, _, _ in items] == list(range(1, 8))


def test_loop_over_files_that_give_no_window_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"nope")
    src = source(tmp_path, loop=True)
    assert isinstance(src.read(), SourceProblem)
    with pytest.raises(SourceError, match="none of the 1 WAV file"):
        src.read()


def test_lent_windows_stay_intact_until_released_and_slots_are_reused(tmp_path: Path) -> None:
    samples = np.arange(48000) % 20000
    write_pcm(tmp_path / "a.wav", samples, 48000, 2)
    src = source(tmp_path / "a.wav")
    held = []
    for _ in range(MIN_LENT):
        f = src.read()
        assert isinstance(f, Frame)
        held.append(f)
    buffers = {id(values(f)) for f in held}
    assert len(buffers) == MIN_LENT
    for k, f in enumerate(held):  # none was overwritten while the others were read
        np.testing.assert_array_equal(values(f), samples[k * 4800 : (k + 1) * 4800] / 32768.0)
    seen = set(buffers)
    for f in held:
        src.release(f)
    for k in range(MIN_LENT, 10):
        f = src.read()
        assert isinstance(f, Frame)
        np.testing.assert_array_equal(values(f), samples[k * 4800 : (k + 1) * 4800] / 32768.0)
        seen.add(id(values(f)))
        src.release(f)
    assert len(seen) <= MIN_LENT + 1, "a window was not read into a reused slot"


# ---------------------------------------------------------------------------------------
# the reader against hostile bytes


@PROPERTY
@given(
    data=st.binary(max_size=400),
    prefix=st.sampled_from([b"", b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffWAVEfmt "]),
)
def test_reader_on_arbitrary_bytes_fails_cleanly_or_reads_finite_samples(
    tmp_path_factory: Any, data: bytes, prefix: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.wav"
    path.write_bytes(prefix + data)
    _read_all_or_format_error(path)


@settings(PROPERTY, max_examples=400)
@given(
    # mostly valid values, so that most files get past the header and their data is read
    tag=st.sampled_from([1, 1, 3, 3, 0xFFFE, 0xFFFE, 2, 0]),
    channels=st.sampled_from([1, 1, 2, 2, 3, 6, 0, 65]),
    rate=st.sampled_from([8000, 44100, 48000, 48000, 0, 2_000_000]),
    bits=st.sampled_from([8, 16, 24, 32, 32, 64, 0, 12]),
    block_delta=st.sampled_from([0, 0, 0, 0, 1, -1]),
    payload=st.binary(max_size=300),
    declared=st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1)),
    cut=st.one_of(st.just(0), st.just(0), st.integers(0, 400)),
    valid=st.booleans(),
)
def test_reader_on_mutated_headers(
    tmp_path_factory: Any,
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    block_delta: int,
    payload: bytes,
    declared: int | None,
    cut: int,
    valid: bool,
) -> None:
    if valid:  # a header the reader takes, so that the payload, sizes and cuts are what is tested
        bits = {1: bits if bits in (8, 16, 24, 32) else 16, 3: 64 if bits == 64 else 32}.get(tag, 32)
        tag = tag if tag in (1, 3, 0xFFFE) else 1
        channels, rate, block_delta = min(max(channels, 1), 8), 44100, 0
    block = max(0, channels * bits // 8 + block_delta) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    if tag == 0xFFFE:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", 3 if bits == 32 else 1) + SUBFORMAT_TAIL
    data = riff((b"fmt ", fmt), (b"data", payload), declared={b"data": declared} if declared is not None else None)
    path = tmp_path_factory.mktemp("fuzz") / "x.wav"
    path.write_bytes(data[: len(data) - cut] if cut < len(data) else data)
    _read_all_or_format_error(path)


def _read_all_or_format_error(path: Path) -> None:
    try:
        reader = WavReader(path, chunk_frames=64)
    except WavFormatError as err:
        assert str(err) and "\n" not in str(err)
        return
    total = 0
    try:
        while (chunk := reader.read()) is not None:
            assert chunk.dtype == np.float32 and np.isfinite(chunk).all()
            if not reader.info.is_float:
                assert np.abs(chunk).max(initial=0.0) <= 1.0
            total += chunk.size
    except WavFormatError as err:
        assert "NaN/Inf" in str(err)
    finally:
        reader.close()
    assert total <= reader.info.frames
    assert reader.info.data_offset + reader.info.data_bytes <= path.stat().st_size


@PROPERTY
@given(data=st.binary(max_size=300))
def test_the_source_never_raises_on_hostile_files(tmp_path_factory: Any, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "a.wav").write_bytes(riff((b"fmt ", fmt_chunk(1, 1, 48000, 16))) + data)
    (folder / "b.wav").write_bytes(b"RIFF" + data)
    good(folder / "c.wav")
    items = drain(source(folder))
    assert frames_of(items)[-1].source == "c.wav@0.0s"


# ---------------------------------------------------------------------------------------
# into the model's input: raw samples, no features


def info_of(shape: tuple[int, ...], dtype: type = np.float32) -> TensorInfo:
    return TensorInfo(
        index=0,
        name="samples",
        shape=shape,
        dtype=np.dtype(dtype),
        scale=0.0,
        zero_point=0,
        scales=(),
        zero_points=(),
        quantized_dimension=0,
    )


def test_raw_samples_are_copied_into_the_tensor_without_allocation(tmp_path: Path) -> None:
    n = 144000  # BirdNET: 3 s at 48 kHz
    x = np.random.default_rng(3).uniform(-1, 1, 3 * 48000 + 10)
    write_float(tmp_path / "b.wav", x.astype(np.float32), 48000)
    src = source(tmp_path / "b.wav", wav_window_s=3.0)
    pp = Preprocessor(info_of((1, n)), None, ())
    tensor = np.zeros((1, n), np.float32)
    f = src.read()
    assert isinstance(f, Frame)
    assert pp.run(f, lambda: tensor).prepared == Prepared()
    plan = pp.plan
    assert isinstance(plan, VectorPlan) and plan.raw
    assert "copied straight into the tensor" in "\n".join(plan.describe())
    np.testing.assert_array_equal(tensor[0], x[:n].astype(np.float32))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(5):
            pp.run(f, lambda: tensor)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < n, f"{grown} bytes allocated over 5 windows of {n} samples"
    src.release(f)


def test_raw_samples_with_a_nan_are_skipped_as_before() -> None:
    pp = Preprocessor(info_of((1, 4)), None, ())
    tensor = np.full((1, 4), 7.0, np.float32)
    row = Frame(1, 0.0, 0.0, "x.wav@0.0s", values=np.array([0.1, math.nan, 0.2, 0.3]))
    assert pp.run(row, lambda: tensor) is None
    np.testing.assert_array_equal(tensor, np.full((1, 4), 7.0, np.float32))


# ---------------------------------------------------------------------------------------
# end to end: the bundled audio classifier, 44.1 kHz files, the real agent and broker


def _manifest_audio(bundled: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((bundled / "manifest.json").read_text())["models"]["audio"]
    return entry


def test_audio_model_on_44k1_files_through_the_agent(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    entry = _manifest_audio(bundled)
    rate, window = entry["transform"]["rate"], entry["transform"]["window"]
    assert (rate, window) == (audio_synth.RATE, audio_synth.WINDOW)
    labels = (bundled / entry["labels"]).read_text().split()
    assert labels == list(audio_synth.CLASSES)
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(7)  # neither the training seed nor verify_models' held-out seed
    per_class, seconds = 10, 1.5  # three 0.5 s windows per clip once resampled to 48 kHz
    truth: dict[str, str] = {}
    for i in range(per_class):
        for cls in audio_synth.CLASSES:
            name = f"{i:02d}_{cls}.wav"
            x = audio_synth.clip(cls, seconds, 44100, rng)
            if i % 2:  # half of them stereo, the sound on both channels at different gains
                x = np.stack([x, 0.5 * x], axis=1)
            write_pcm(clips / name, int16(x), 44100, 2)
            truth[name] = cls
    (clips / "05_zz_broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (clips / "06_zz_adpcm.wav").write_bytes(riff((b"fmt ", fmt_chunk(2, 1, 44100, 4)), (b"data", b"\x00" * 64)))
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {
                "kind": "wav",
                "path": str(clips),
                "wav_sample_rate": rate,
                # no wav_window_s: the agent opens the source once the model says its input length
                "exit_when_done": True,
            },
            "model": {
                "path": str(bundled / entry["file"]),
                "labels": str(bundled / entry["labels"]),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "postprocess": {"top_k": 2},
        },
    )
    proc = run_agent(cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    col.wait_status("offline", 15)

    expected = {f"{name}@{t}s" for name in truth for t in ("0.0", "0.5", "1.0")}
    results = {r["frame"]["source"]: r for r in col.on("results")}
    assert set(results) <= expected, sorted(set(results) - expected)
    correct = sum(1 for src, r in results.items() if r["top"][0]["label"] == truth[src.split("@")[0]])
    # over the windows FED: a window without a result counts as wrong
    assert correct / len(expected) >= 0.95, f"{correct}/{len(expected)} windows correct"
    events = col.on("events")
    errors = {e["detail"].get("source"): e["message"] for e in events if e["kind"] == "source_error"}
    assert set(errors) == {"05_zz_broken.wav", "06_zz_adpcm.wav"}, events
    assert "ADPCM" in errors["06_zz_adpcm.wav"]
    assert not [e for e in events if e["kind"] in ("nan_output", "inf_output", "model_error")], events
