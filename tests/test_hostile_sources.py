"""Hostile and unlucky source files (issue 16, items 4, 5, 6, 9 and 12c): each generated here,
small, and fed to the real agent on a real mosquitto, with the agent's peak RSS taken from the
kernel (the agent process's VmHWM) where memory was the problem. Plus unit tests
of the image header reader on real encoded images of every format it reads, and of the WAV
header checks."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
import wave
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import INTERPRETER
from mqtt_helpers import REPO, Collector, agent_command, subprocess_env, write_config

from edge_agent.bounded import MAX_QUOTE_CHARS
from edge_agent.broker import LocalBroker
from edge_agent.config import SourceConfig
from edge_agent.config.source import DEFAULT_MAX_PIXELS
from edge_agent.errors import SourceError
from edge_agent.guard import Context, InputStats, diagnose
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources import Frame, SourceProblem, open_source
from edge_agent.sources.csv_rows import MAX_LINE_CHARS
from edge_agent.sources.image_header import ImageHeaderError, read_image_size
from edge_agent.sources.images import decode_image
from edge_agent.sources.wav_reader import MAX_RATE, MIN_RATE, WavFormatError, WavReader

# the agent's peak RSS allowed while it meets a hostile file: a few times what it takes on good
# files (~150 MB with the bundled models), far below what the files ask for (GBs)
PEAK_RSS_MB = 400
# the longest event message or log line a hostile input may cause
MAX_LINE = 1000


# ---- helpers ------------------------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A PNG header (signature, IHDR, an empty IDAT, IEND) claiming width×height RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png_of_zeros(width: int, height: int) -> bytes:
    """A real, valid gray PNG of width×height black pixels, compressed row by row (never whole in
    memory): a few hundred KB that decodes to width×height bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def vm_hwm_mb(pid: int) -> float:
    """The process's own peak resident memory (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_measured(config: Path, *, timeout: float = 90.0) -> tuple[int, str, float]:
    """Run the agent to its end: (exit code, output, peak RSS in MB of the agent process itself).

    The peak is the kernel's high-water mark of the agent's own memory (VmHWM), read until it
    exits: a high-water mark, so the last read holds the peak up to then. Not wait4's ru_maxrss:
    Linux carries the forking process's resident size across exec into it, so from a pytest
    process that has grown (other tests' models) it reports the test runner's size, not the agent's."""
    log = config.with_suffix(".log")
    peak = 0.0
    with log.open("wb") as out:
        proc = subprocess.Popen(
            agent_command(config), cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            peak = max(peak, vm_hwm_mb(proc.pid))
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, _usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise AssertionError(
                    f"the agent did not end within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, log.read_text(errors="replace"), peak


def digits_model(bundled: Path) -> dict[str, Any]:
    return {
        "path": str(bundled / "digits_uint8.tflite"),
        "labels": str(bundled / "digits_labels.txt"),
        "task": "classification",
        "interpreter": INTERPRETER,
    }


def write_pcm16(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def wav_bytes(tag: int, channels: int, rate: int, bits: int, data: bytes, *, block: int | None = None) -> bytes:
    block = channels * bits // 8 if block is None else block
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block & 0xFFFFFFFF, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def assert_one_line_and_short(texts: list[str]) -> None:
    for text in texts:
        assert "\n" not in text and len(text) < MAX_LINE, text[:300]


# ---- the image header reader --------------------------------------------------------------------
ENCODED = [".png", ".jpg", ".bmp", ".gif", ".webp", ".tiff", ".ppm", ".pgm", ".pam", ".pfm", ".sr", ".hdr"]
SIZES = [(1, 1), (3, 5), (480, 640), (17, 1023), (1000, 3), (257, 256)]


@pytest.mark.parametrize("ext", ENCODED)
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_header_size_matches_what_opencv_decodes(ext: str, height: int, width: int) -> None:
    rng = np.random.default_rng(height * 7919 + width)
    img = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    if ext == ".pgm":
        img = img[..., 0]
    ok, buf = cv2.imencode(ext, img)
    assert ok
    size = read_image_size(buf.tobytes())
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert (size.width, size.height) == (width, height) == (decoded.shape[1], decoded.shape[0])


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),  # SOF2
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 50]),  # lossy VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless VP8L
        (".png", [cv2.IMWRITE_PNG_COMPRESSION, 0]),
        (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    ],
)
def test_header_size_of_encoder_variants(ext: str, params: list[int]) -> None:
    img = np.zeros((37, 91, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    size = read_image_size(buf.tobytes())
    assert (size.width, size.height) == (91, 37)


def test_jpeg_exif_thumbnail_is_not_taken_for_the_image() -> None:
    """An APP1 segment holding a JPEG thumbnail with its own frame header comes before the image's."""
    _, thumb = cv2.imencode(".jpg", np.zeros((8, 9, 3), np.uint8))
    _, main = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))
    body = b"Exif\x00\x00" + thumb.tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    data = main.tobytes()[:2] + app1 + main.tobytes()[2:]
    size = read_image_size(data)
    assert (size.format, size.width, size.height) == ("JPEG", 60, 40)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (40, 60)


def test_bmp_top_down_and_os2_headers() -> None:
    _, buf = cv2.imencode(".bmp", np.zeros((6, 10, 3), np.uint8))
    top_down = bytearray(buf.tobytes())
    top_down[22:26] = struct.pack("<i", -6)
    assert read_image_size(bytes(top_down)).height == 6
    os2 = b"BM" + bytes(12) + struct.pack("<IHHHH", 12, 300, 200, 1, 24)
    assert (read_image_size(os2).width, read_image_size(os2).height) == (300, 200)


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"", "no PNG, JPEG"),
        (b"plain text, not an image\n", "no PNG, JPEG"),
        (b"\x00\x00\x00 ftypavif" + bytes(40), "no PNG, JPEG"),  # AVIF: decodable, but not sized before
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "cut short"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "IHDR"),
        (b"\x89PNG\r\n\x1a\n" + bytes(8), "IHDR"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10", "DNL"),
        (b"\xff\xd8\xff\xda\x00\x08", "without a frame header"),
        (b"\xff\xd8\xff\xe0\x00\x01", "length 1"),
        (b"\xff\xd8" + (b"\xff\xe0\x00\x10" + bytes(14)) * 3, "cut short"),
        (b"GIF89a\x00\x00\x05\x00\x00\x00\x00", "0×5"),
        (b"RIFF\x00\x00\x00\x00WEBPVP9 ", "unknown first chunk"),
        (b"II*\x00\xff\xff\x00\x00", "past its end"),
        (b"II*\x00\x08\x00\x00\x00\x00\x00", "without ImageWidth"),
        (b"P6\n# only a comment\n", "without a width"),
        (b"P6 99999999999 3\n255\n", "without a width"),
        (b"P7\nDEPTH 3\nENDHDR\n", "without WIDTH"),
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n+X 5 +X 5\n", "resolution line"),
    ],
)
def test_unreadable_headers_are_one_line_reasons(data: bytes, phrase: str) -> None:
    with pytest.raises(ImageHeaderError) as err:
        read_image_size(data)
    assert phrase in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("ext", [e for e in ENCODED if e != ".pgm"])
def test_mutated_headers_never_let_the_decoder_exceed_the_size_read(ext: str) -> None:
    """A seeded single-byte mutation run over each format's first 256 bytes: the reader either
    refuses in one line or reads a size, and whenever OpenCV then decodes the mutant, it decodes
    no more pixels than that size (the check before decoding bounds what decoding allocates)."""
    rng = np.random.default_rng(sum(map(ord, ext)))
    img = rng.integers(0, 256, (23, 37, 3)).astype(np.uint8)
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    _, buf = cv2.imencode(ext, img)
    base = buf.tobytes()
    decoded = 0
    for _ in range(150):
        mutant = bytearray(base)
        mutant[int(rng.integers(0, min(len(base), 256)))] = int(rng.integers(0, 256))
        try:
            size = read_image_size(bytes(mutant))
        except ImageHeaderError as err:
            assert "\n" not in str(err)
            continue
        try:
            out = cv2.imdecode(np.frombuffer(bytes(mutant), np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            continue
        if out is not None:
            decoded += 1
            assert out.shape[0] * out.shape[1] <= size.pixels, (ext, size, out.shape)
    assert decoded > 0  # the run exercised the decoder, not only refusals


def test_a_header_claim_is_read_whatever_the_size() -> None:
    size = read_image_size(png_claiming(100_000, 100_000))
    assert (size.format, size.pixels) == ("PNG", 10**10)


# ---- decode_image and source.max_pixels ---------------------------------------------------------
def test_decode_refuses_an_image_over_max_pixels_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    reason = decode_image(tmp_path / "bomb.png")
    assert isinstance(reason, str)
    assert "100000×100000" in reason and "source.max_pixels = 50000000" in reason and "not decoded" in reason
    _, buf = cv2.imencode(".png", np.full((30, 40, 3), 7, np.uint8))
    (tmp_path / "small.png").write_bytes(buf.tobytes())
    assert isinstance(decode_image(tmp_path / "small.png", 1200), np.ndarray)  # exactly at the limit
    reason = decode_image(tmp_path / "small.png", 1199)
    assert isinstance(reason, str) and "40×30" in reason


def test_max_pixels_is_configured_within_opencvs_own_limit() -> None:
    assert SourceConfig().max_pixels == DEFAULT_MAX_PIXELS == 50_000_000
    assert SourceConfig(max_pixels=1).max_pixels == 1
    for bad in (0, (1 << 30) + 1):
        with pytest.raises(ValueError, match="max_pixels"):
            SourceConfig(max_pixels=bad)


def test_an_image_named_fifo_does_not_block_the_source(tmp_path: Path) -> None:
    _, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a.png").write_bytes(buf.tobytes())
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(buf.tobytes())
    src = open_source(SourceConfig(kind="images", path=str(tmp_path / "*.png")))
    items = []
    while (item := src.read()) is not None:  # the listing takes regular files only
        items.append(item)
    assert [i.source for i in items if isinstance(i, Frame)] == ["a.png", "c.png"]
    reason = decode_image(tmp_path / "b.png")  # named directly, it is refused for what it is
    assert isinstance(reason, str) and "FIFO" in reason


# ---- WAV header checks and the resampler's bound ------------------------------------------------
@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (wav_bytes(1, 1, 1, 16, bytes(32)), "sample rate of 1 Hz"),
        (wav_bytes(1, 1, MIN_RATE - 1, 16, bytes(32)), f"sample rate of {MIN_RATE - 1} Hz"),
        (wav_bytes(1, 1, MAX_RATE + 1, 16, bytes(32)), f"sample rate of {MAX_RATE + 1} Hz"),
        (wav_bytes(1, 1, 0xFFFFFFFF, 16, bytes(32)), "sample rate of 4294967295 Hz"),
        (wav_bytes(1, 65, 48000, 16, bytes(130)), "65 channels"),
        (wav_bytes(1, 2, 48000, 16, bytes(32), block=3), "block align 3"),
        (wav_bytes(1, 1, 48000, 7, bytes(32)), "7-bit PCM"),
        (wav_bytes(3, 1, 48000, 24, bytes(33)), "24-bit float"),
    ],
)
def test_wav_header_values_outside_sane_ranges_are_refused(tmp_path: Path, data: bytes, phrase: str) -> None:
    (tmp_path / "x.wav").write_bytes(data)
    with pytest.raises(WavFormatError) as err:
        WavReader(tmp_path / "x.wav")
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_wav_at_the_lowest_sane_rate_is_read(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(wav_bytes(1, 1, MIN_RATE, 16, bytes(64)))
    reader = WavReader(tmp_path / "x.wav")
    assert reader.info.rate == MIN_RATE and reader.info.frames == 32
    reader.close()


def test_wav_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.wav")
    with pytest.raises(WavFormatError, match="FIFO"):
        WavReader(tmp_path / "x.wav")


def test_data_size_beyond_the_file_is_a_truncation_not_a_read_past_it(tmp_path: Path) -> None:
    data = wav_bytes(1, 1, 48000, 16, np.full(4800, 1000, "<i2").tobytes())
    data = data[:40] + struct.pack("<I", 0xFFFFFFF0) + data[44:]  # the data chunk claims 4 GB
    (tmp_path / "x.wav").write_bytes(data)
    reader = WavReader(tmp_path / "x.wav")
    assert reader.info.data_bytes == 9600 and reader.info.truncated
    reader.close()


def test_resampling_from_the_lowest_rate_stays_bounded_whatever_the_length(tmp_path: Path) -> None:
    """100 Hz to 48 kHz is 480 samples out per sample in. The resampler is fed in pieces and
    windows are cut between them, so memory does not follow a chunk's expansion (before:
    16,384 frames in → 7.9 M samples in one array, the fifo grown to hold them)."""
    pytest.importorskip("soxr")
    import tracemalloc  # noqa: PLC0415

    peaks = []
    for seconds in (60, 600):
        path = tmp_path / f"slow{seconds}.wav"
        write_pcm16(path, (np.sin(np.arange(seconds * 100) * 0.3) * 8000), 100)
        src = open_source(SourceConfig(kind="wav", path=str(path), wav_sample_rate=48000, wav_window_s=0.5))
        tracemalloc.start()
        windows = 0
        while (item := src.read()) is not None:
            assert isinstance(item, Frame), item
            src.release(item)
            windows += 1
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        src.close()
        assert windows == seconds * 2
    # bound: 16 MB of Python-visible buffers (soxr gives up to ~1.6 MB a call at this ratio)
    assert max(peaks) < 16e6, peaks


# ---- CSV lines ----------------------------------------------------------------------------------
def test_csv_header_longer_than_a_line_may_be_is_quoted_in_part(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"col{i}" for i in range(1_000_000)) + "\n1,2\n")
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig(kind="csv", path=str(path)))
    text = str(err.value)
    assert "more than the 1048576 allowed" in text and "col0,col1" in text
    assert len(text) < 2 * MAX_QUOTE_CHARS + 200 and "\n" not in text


def test_csv_row_longer_than_a_line_may_be_is_its_own_problem(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "a,b\n1,2\n" + "9," * (MAX_LINE_CHARS // 2 + 10) + "\n3,4\n" + "x" * (MAX_LINE_CHARS + 5) + "\n5,6\n"
    )
    src = open_source(SourceConfig(kind="csv", path=str(path)))
    items = []
    while (item := src.read()) is not None:
        items.append(item)
    assert [i.source for i in items] == ["rows.csv:2", "rows.csv:3", "rows.csv:4", "rows.csv:5", "rows.csv:6"]
    assert [type(i).__name__ for i in items] == ["Frame", "SourceProblem", "Frame", "SourceProblem", "Frame"]
    problems = [i.message for i in items if isinstance(i, SourceProblem)]
    assert "more than the 1048576 allowed" in problems[0] and "9,9,9" in problems[0]
    assert_one_line_and_short(problems)
    frames = [i for i in items if isinstance(i, Frame)]
    assert [list(f.values) for f in frames if f.values is not None] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_csv_directory_or_device_is_refused_a_fifo_is_a_sensor_feed(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory"):
        open_source(SourceConfig(kind="csv", path=str(tmp_path)))
    with pytest.raises(SourceError, match="/dev/zero is a character device"):
        open_source(SourceConfig(kind="csv", path="/dev/zero"))
    # a named pipe is how a sensor daemon feeds rows (tests/test_service.py): read as it is written
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("w") as w:
            w.write("a,b\n1,2\n3,4\n")

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    src = open_source(SourceConfig(kind="csv", path=str(fifo)))
    rows = [src.read() for _ in range(2)]
    assert [list(r.values) for r in rows if isinstance(r, Frame) and r.values is not None] == [[1.0, 2.0], [3.0, 4.0]]
    writer.join(5)
    src.close()


def test_csv_missing_column_with_a_huge_header_is_quoted_in_part(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(50_000)) + "\n")
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig(kind="csv", path=str(path), columns=("nope",)))
    assert "no column(s) nope" in str(err.value) and len(str(err.value)) < 400


# ---- 12c: the diagnosis depends on the input kind and range ----------------------------------------
FLOAT_IN = TensorInfo(name="in", index=0, shape=(1, 24000), dtype=np.dtype(np.float32), scale=0.0, zero_point=0)


@pytest.mark.parametrize(
    ("stats", "ctx", "phrase"),
    [
        (InputStats(0.0, 3e38, 1e38, 0), Context(input_kind="audio"), "audio samples reach 3e+38"),
        (InputStats(-3e38, 3e38, 0.0, 0), Context(input_kind="audio"), "not normalized audio"),
        (InputStats(-0.9, 0.95, 0.0, 0), Context(input_kind="audio"), "looks plausible"),
        (InputStats(-3e4, 3e4, 0.0, 0), Context(input_kind="audio", audio_full_scale=32768.0), "looks plausible"),
        (InputStats(0.0, 200.0, 90.0, 0), Context(input_kind="audio"), "audio samples reach 200"),
        (InputStats(0.0, 255.0, 117.0, 0), Context(input_kind="image"), "raw 0-255 pixels"),
        (InputStats(0.0, 3e38, 1e38, 0), Context(input_kind="image"), "far outside any usual training range"),
        (InputStats(0.0, 3e38, 1e38, 0), Context(), "far outside any usual training range"),
        (InputStats(0.0, 200.0, 90.0, 0), Context(input_kind="sensor"), "looks plausible"),
        (InputStats(0.0, 5e6, 90.0, 0), Context(input_kind="sensor"), "sensor values far outside"),
    ],
)
def test_diagnosis_follows_the_input_kind_and_range(stats: InputStats, ctx: Context, phrase: str) -> None:
    text = diagnose(stats, FLOAT_IN, ctx)
    assert phrase in text, text
    if phrase != "raw 0-255 pixels":
        assert "pixels" not in text


# ---- the real agent -----------------------------------------------------------------------------
def test_pixel_bombs_between_good_images_are_skipped_and_the_batch_ends(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """Items 5 and 6: a 74-byte PNG claiming 100000×100000 (OpenCV's own limit raised an error
    that restarted the source: the first image forever) and a ~400 KB valid PNG of 20000×20000
    (decoded: 2.4 GB RSS, published) between good digits, loop = false, exit_when_done = true:
    two source_error events naming them, a result for each good image, the agent ends, and its
    peak RSS stays under PEAK_RSS_MB."""
    folder = tmp_path / "frames"
    folder.mkdir()
    good = sorted((bundled / "digits_frames").glob("*.png"))[:3]
    (folder / "a.png").write_bytes(good[0].read_bytes())
    (folder / "b_bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (folder / "c.png").write_bytes(good[1].read_bytes())
    big = png_of_zeros(20_000, 20_000)
    assert len(big) < 500_000
    (folder / "d_big.png").write_bytes(big)
    (folder / "e.png").write_bytes(good[2].read_bytes())
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(folder), "loop": False, "exit_when_done": True},
            "model": digits_model(bundled),
            "preprocess": {"resize": "stretch", "color": "rgb"},
        },
    )
    code, output, peak_mb = run_measured(cfg)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    col.wait_status("offline", 15)
    assert [r["frame"]["source"] for r in col.on("results")] == ["a.png", "c.png", "e.png"]
    errors = [e for e in col.on("events") if e["kind"] == "source_error"]
    assert [e["detail"]["source"] for e in errors] == ["b_bomb.png", "d_big.png"], errors
    assert "100000×100000" in errors[0]["message"] and "max_pixels" in errors[0]["message"]
    assert "20000×20000" in errors[1]["message"] and "400.0 megapixels" in errors[1]["message"]
    assert_one_line_and_short([e["message"] for e in errors])
    assert peak_mb < PEAK_RSS_MB, f"peak RSS {peak_mb:.0f} MB"


def test_a_pixel_bomb_dropped_into_a_watched_folder_is_skipped(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = sorted((bundled / "digits_frames").glob("*.png"))[:2]
    (inbox / "1_bomb.png").write_bytes(png_claiming(70_000, 70_000))
    (inbox / "2.png").write_bytes(good[0].read_bytes())
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(inbox), "images_watch": True},
            "model": digits_model(bundled),
            "preprocess": {"resize": "stretch", "color": "rgb"},
        },
    )
    proc = subprocess.Popen(
        agent_command(cfg), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        col.wait_for(lambda m: m.leaf == "results", 60, "the first result")
        (inbox / "3.png").write_bytes(good[1].read_bytes())
        col.wait_for(lambda m: m.leaf == "results" and m.payload["frame"]["source"] == "3.png", 30, "the second")
        ev = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "source_error", 10, "source_error")
        assert "1_bomb.png" in ev.payload["message"] and "70000×70000" in ev.payload["message"]
        assert proc.poll() is None  # still watching
    finally:
        proc.kill()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "Traceback" not in out, out[-3000:]


def test_a_wav_claiming_1_hz_between_good_files_is_skipped(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """Item 4: a WAV header claiming 1 Hz (16,384 samples that the resampler made ~786 M at
    48 kHz: ~1 GB/s) is a source_error; the good files around it give their windows."""
    clips = tmp_path / "clips"
    clips.mkdir()
    tone = (np.sin(2 * np.pi * 440 * np.arange(24000) / 48000) * 8000).astype("<i2")
    write_pcm16(clips / "a.wav", tone, 48000)
    (clips / "b_one_hz.wav").write_bytes(wav_bytes(1, 1, 1, 16, bytes(2 * 16384)))
    write_pcm16(clips / "c.wav", tone, 44100)  # resampled: the resampler still works
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "wav", "path": str(clips), "wav_sample_rate": 48000, "exit_when_done": True},
            "model": {
                "path": str(bundled / "audio.tflite"),
                "labels": str(bundled / "audio_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
        },
    )
    code, output, peak_mb = run_measured(cfg)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    col.wait_status("offline", 15)
    assert [r["frame"]["source"] for r in col.on("results")] == ["a.wav@0.0s", "c.wav@0.0s"]
    errors = [e for e in col.on("events") if e["kind"] == "source_error"]
    assert [e["detail"]["source"] for e in errors] == ["b_one_hz.wav"]
    assert "sample rate of 1 Hz" in errors[0]["message"]
    assert peak_mb < PEAK_RSS_MB, f"peak RSS {peak_mb:.0f} MB"


def test_float_audio_at_3e38_is_not_diagnosed_as_pixels(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """Item 12c: float samples near float32's limit reach the audio model; whatever the model
    makes of them, what the agent says names audio, never raw 0-255 pixels."""
    clips = tmp_path / "clips"
    clips.mkdir()
    huge = np.full(24000, 3e38, "<f4")  # all positive: "min >= 0, max > 20" read as pixels before
    (clips / "huge.wav").write_bytes(wav_bytes(3, 1, 48000, 32, huge.tobytes()))
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "wav", "path": str(clips), "wav_sample_rate": 48000, "exit_when_done": True},
            "model": {
                "path": str(bundled / "audio.tflite"),
                "labels": str(bundled / "audio_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "guard": {"event_interval_s": 0},
        },
    )
    code, output, _ = run_measured(cfg)
    assert code == 0, output[-3000:]
    col.wait_status("offline", 15)
    events = [e for e in col.on("events") if e["kind"] not in ("started", "stopping")]
    said = [e["message"] for e in events] + output.splitlines()
    assert not [s for s in said if "pixels" in s], said
    faults = [e for e in events if e["kind"] in ("nan_output", "inf_output", "input_out_of_range", "source_error")]
    assert faults, events
    assert any("audio samples reach 3e+38" in e["message"] for e in faults), faults


def test_a_10_mb_csv_header_is_quoted_in_part_on_every_retry(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """Item 9: a 10 MB header was echoed whole into every source_error event and log line, on
    every retry (92 MB of log in 60 s). Now each says what is wrong in one short line."""
    path = tmp_path / "rows.csv"
    path.write_text(",".join(f"feature_{i}" for i in range(1_000_000)) + "\n1,2,3,4\n")
    assert path.stat().st_size > 10_000_000
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "csv", "path": str(path), "reconnect_max_s": 0.5},
            "model": {"path": str(bundled / "sensor.tflite"), "task": "regression", "interpreter": INTERPRETER},
            # the header is checked for these columns: before, the message quoted the header whole
            "preprocess": {"features": [{"name": n, "mean": 0.0, "std": 1.0} for n in ("age", "bmi", "bp", "s5")]},
        },
    )
    proc = subprocess.Popen(
        agent_command(cfg), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        col.wait_for(
            lambda m: (
                m.leaf == "events"
                and m.payload["kind"] == "source_error"
                and "retrying" in m.payload["message"]
                and len([x for x in col.snapshot() if x.leaf == "events" and x.payload["kind"] == "source_error"]) >= 3
            ),
            60,
            "three source_error events (retries)",
        )
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    errors = [e["message"] for e in col.on("events") if e["kind"] == "source_error"]
    assert len(errors) >= 3
    assert all("more than the 1048576 allowed" in m and "feature_0,feature_1" in m for m in errors), errors[:1]
    assert_one_line_and_short(errors)
    assert_one_line_and_short([line for line in out.splitlines() if "rows.csv" in line])
    assert "Traceback" not in out


def test_a_huge_csv_row_is_skipped_and_the_rows_after_it_come(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "age,bmi,bp,s5\n61,25.8,90,4.9972\n" + "7," * 2_000_000 + "7\n74,21.0,101,4.3944\n",
    )
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "csv", "path": str(path), "exit_when_done": True},
            "model": {"path": str(bundled / "sensor.tflite"), "task": "regression", "interpreter": INTERPRETER},
        },
    )
    code, output, _ = run_measured(cfg)
    assert code == 0, output[-3000:]
    col.wait_status("offline", 15)
    assert [r["frame"]["source"] for r in col.on("results")] == ["rows.csv:2", "rows.csv:4"]
    errors = [e for e in col.on("events") if e["kind"] == "source_error"]
    assert [e["detail"]["source"] for e in errors] == ["rows.csv:3"]
    assert "more than the 1048576 allowed" in errors[0]["message"]
    assert_one_line_and_short([e["message"] for e in errors] + output.splitlines())
