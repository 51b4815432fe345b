"""`images` with `images_watch = true`: real files appearing in a real folder while the source
polls it, as a camera writing JPEGs would; then the real agent on such a folder.

Files are written by this test's thread between `read()` calls (or by a helper thread for the
agent), never faked: partial writes are real partial files on disk.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from mqtt_helpers import AgentProcess, Collector, write_config
from pydantic import ValidationError

from edge_agent.broker import LocalBroker
from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources import NO_FRAME_YET, Frame, FrameSource, NoFrameYet, SourceProblem, open_source
from edge_agent.sources.base import MAX_WAIT_S
from edge_agent.sources.images_watch import POLL_S, WatchedFolderSource

WAIT_S = 5.0  # generous: how long a test waits for a file to be taken


def _watch(folder: Path, **kw: object) -> FrameSource:
    return open_source(SourceConfig(kind="images", path=str(folder), images_watch=True, **kw))  # type: ignore[arg-type]


def _image(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg(seed: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", _image(seed))
    assert ok
    return buf.tobytes()


def _png(seed: int) -> bytes:
    ok, buf = cv2.imencode(".png", _image(seed))
    assert ok
    return buf.tobytes()


def _next(src: FrameSource, timeout: float = WAIT_S) -> Frame | SourceProblem:
    """The next frame or problem, reading as the agent does (NO_FRAME_YET: ask again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = src.read()
        if item is None:
            raise AssertionError("a watched folder never ends")
        if not isinstance(item, NoFrameYet):
            return item
    raise AssertionError(f"nothing taken within {timeout} s")


def _idle_for(src: FrameSource, seconds: float) -> None:
    """Read for `seconds`; only NO_FRAME_YET may come, each within MAX_WAIT_S (+ slack)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        item = src.read()
        assert item is NO_FRAME_YET, item
        assert time.monotonic() - t0 < MAX_WAIT_S + 0.5  # returns promptly, never blocks the agent


def _frame(item: object) -> Frame:
    assert isinstance(item, Frame), item
    return item


def _problem(item: object) -> SourceProblem:
    assert isinstance(item, SourceProblem), item
    assert "\n" not in item.message
    return item


def test_existing_files_then_new_ones_as_they_arrive(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "b.png").write_bytes(_png(2))
    src = _watch(tmp_path)
    a, b = _frame(_next(src)), _frame(_next(src))
    assert (a.source, b.source) == ("a.png", "b.png")
    assert a.pixels is not None and np.array_equal(a.pixels, _image(1))
    _idle_for(src, 3 * POLL_S)
    # a writer that renames a finished file into place: the temporary name is never read
    (tmp_path / "c.png.part").write_bytes(_png(3))
    (tmp_path / ".d.png").write_bytes(_png(4))  # hidden: ignored
    _idle_for(src, 3 * POLL_S)
    os.rename(tmp_path / "c.png.part", tmp_path / "c.png")
    c = _frame(_next(src))
    assert c.source == "c.png"
    assert c.pixels is not None and np.array_equal(c.pixels, _image(3))
    assert c.seq == 3
    # taken once: nothing more comes while the folder does not change
    _idle_for(src, 4 * POLL_S)
    src.close()


def test_a_jpeg_written_slowly_in_two_halves_is_taken_whole(tmp_path: Path) -> None:
    data = _jpeg(7)
    src = _watch(tmp_path, images_settle_s=5.0)
    path = tmp_path / "cam_0001.jpg"
    with path.open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        # several polls see the half file, unchanged: no end marker, so it is not taken
        _idle_for(src, 4 * POLL_S)
        fh.write(data[len(data) // 2 :])
    f = _frame(_next(src))
    assert f.source == "cam_0001.jpg"
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert f.pixels is not None and np.array_equal(f.pixels, want)


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        ("trunc.jpg", _jpeg(3)[:300], "truncated JPEG"),  # the camera died halfway: never completed
        ("empty.jpg", b"", "is empty"),
        ("notes.jpg", b"these are not pixels\n" * 20, "not a decodable"),
        # a JPEG whose markers are intact but whose header is garbage
        ("corrupt.jpg", _jpeg(4)[:2] + b"\xff\xc0" + bytes(200) + _jpeg(4)[-2:], "not a decodable"),
        ("trunc.png", _png(5)[:100], "truncated PNG"),
    ],
    ids=["truncated-jpeg", "empty", "text", "corrupt-jpeg", "truncated-png"],
)
def test_a_bad_file_is_a_problem_naming_it_and_the_next_file_still_comes(
    tmp_path: Path, name: str, content: bytes, phrase: str
) -> None:
    src = _watch(tmp_path, images_settle_s=0.5)
    _idle_for(src, POLL_S)
    (tmp_path / name).write_bytes(content)
    p = _problem(_next(src))
    assert p.source == name
    assert name in p.message and phrase in p.message
    (tmp_path / "z_good.jpg").write_bytes(_jpeg(9))
    assert _frame(_next(src)).source == "z_good.jpg"
    # the bad file is not reported again
    _idle_for(src, 4 * POLL_S)


def test_a_file_deleted_between_listing_and_reading_is_a_problem(tmp_path: Path) -> None:
    for i, n in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        (tmp_path / n).write_bytes(_jpeg(i))
    src = _watch(tmp_path)
    assert _frame(_next(src)).source == "a.jpg"  # the same scan found b and c ready
    (tmp_path / "b.jpg").unlink()
    p = _problem(_next(src))
    assert p.source == "b.jpg" and "cannot read b.jpg" in p.message
    assert _frame(_next(src)).source == "c.jpg"


def test_a_file_overwritten_in_place_is_taken_again(tmp_path: Path) -> None:
    """A camera that keeps rewriting `latest.jpg`: each version is taken once."""
    path = tmp_path / "latest.jpg"
    path.write_bytes(_jpeg(1))
    src = _watch(tmp_path)
    first = _frame(_next(src))
    _idle_for(src, 3 * POLL_S)
    tmp = tmp_path / "latest.jpg.tmp"
    tmp.write_bytes(_jpeg(2))
    os.replace(tmp, path)
    second = _frame(_next(src))
    assert second.source == "latest.jpg"
    assert first.pixels is not None and second.pixels is not None
    assert not np.array_equal(first.pixels, second.pixels)


def test_delete_after_taking_keeps_the_folder_empty(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(i))
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    src = _watch(tmp_path, images_after="delete", images_settle_s=0.5)
    items = [_next(src) for _ in range(4)]
    assert sorted(i.source for i in items) == ["0.jpg", "1.jpg", "2.jpg", "bad.jpg"]
    assert isinstance(next(i for i in items if i.source == "bad.jpg"), SourceProblem)
    assert list(tmp_path.iterdir()) == []


def test_move_after_taking(tmp_path: Path) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "inbox" / "done"
    inbox.mkdir()
    (inbox / "a.jpg").write_bytes(_jpeg(1))
    src = _watch(inbox, images_after="move", images_move_to=str(done))
    assert _frame(_next(src)).source == "a.jpg"
    assert [p.name for p in inbox.iterdir()] == ["done"]
    assert (done / "a.jpg").read_bytes() == _jpeg(1)
    (inbox / "b.jpg").write_bytes(_jpeg(2))
    assert _frame(_next(src)).source == "b.jpg"
    assert sorted(p.name for p in done.iterdir()) == ["a.jpg", "b.jpg"]
    _idle_for(src, 3 * POLL_S)  # a moved file, in a folder below, is not found again


def test_memory_follows_the_folder_not_the_run(tmp_path: Path) -> None:
    """Files taken with `keep` are remembered only while they are in the folder."""
    src = _watch(tmp_path)
    assert isinstance(src, WatchedFolderSource)
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(i))
    assert [_frame(_next(src)).source for _ in range(5)] == [f"{i}.jpg" for i in range(5)]
    for p in tmp_path.iterdir():
        p.unlink()
    _idle_for(src, 3 * POLL_S)
    assert src._taken == {}  # the bounded state is the point of this test


def test_folder_problems_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a folder"):
        _watch(tmp_path / "missing")
    folder = tmp_path / "cam"
    folder.mkdir()
    src = _watch(folder)
    _idle_for(src, POLL_S)
    shutil.rmtree(folder)
    with pytest.raises(SourceError, match="cannot list"):
        for _ in range(10):
            src.read()


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"loop": True}, "cannot also loop"),
        ({"images_after": "delete", "images_watch": False}, "only with images_watch"),
        ({"images_after": "move"}, "images_move_to"),
        ({"images_move_to": "/tmp/x"}, "images_move_to"),
    ],
)
def test_watch_config_combinations(tmp_path: Path, kw: dict[str, object], phrase: str) -> None:
    with pytest.raises(ValidationError, match=phrase):
        SourceConfig(**{"kind": "images", "path": str(tmp_path), "images_watch": True, **kw})  # type: ignore[arg-type]


# ---- the real agent on a watched folder -------------------------------------------------------
def test_agent_classifies_frames_dropped_into_a_watched_folder(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, bundled: Path
) -> None:
    """The agent keeps running (status online, no exit) while the folder is empty, takes each
    file as it arrives, and a corrupt one is a `source_error` event naming it."""
    from conftest import INTERPRETER  # noqa: PLC0415

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    frames = sorted((bundled / "digits_frames").glob("*.png"))[:4]
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(inbox), "images_watch": True, "images_after": "delete"},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "stretch", "color": "rgb"},
            "guard": {"event_interval_s": 0},
        },
    )
    with AgentProcess(cfg) as agent:
        col.wait_status("online", 60)
        time.sleep(1.0)  # an empty folder: the agent waits, it does not end
        assert agent.running(), agent.output
        assert col.on("results") == []
        for i, f in enumerate(frames[:2]):
            shutil.copy(f, inbox / f"{i:02d}_{f.name}")
        (inbox / "02_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken camera output")
        for i, f in enumerate(frames[2:], start=3):
            shutil.copy(f, inbox / f"{i:02d}_{f.name}")
        col.wait_for(
            lambda m: m.leaf == "results" and m.payload["frame"]["source"].startswith("04_"), 30, "the last result"
        )
        ev = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "source_error", 30, "source_error")
        assert "02_broken.jpg" in ev.payload["message"]
        results = col.on("results")
        assert [r["frame"]["source"] for r in results] == [
            f"{i:02d}_{f.name}" for i, f in zip((0, 1, 3, 4), frames, strict=True)
        ]
        labels = (bundled / "digits_labels.txt").read_text().split()
        assert all(r["top"][0]["label"] == labels[r["top"][0]["index"]] for r in results), results
        assert not any(inbox.iterdir())  # images_after = "delete"
        assert agent.running(), agent.output
        assert "Traceback" not in agent.output, agent.output


def test_watchdog_pings_go_on_while_the_watched_folder_is_empty(
    tmp_path: Path, mosquitto: LocalBroker, device: str, bundled: Path
) -> None:
    """Waiting for a camera's next file is idle by design, not a hung capture: systemd's
    watchdog keeps hearing from the agent (its loop turns every MAX_WAIT_S at most)."""
    from conftest import INTERPRETER  # noqa: PLC0415
    from test_service import NotifySocket, start  # noqa: PLC0415

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(inbox), "images_watch": True},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "task": "classification",
                "interpreter": INTERPRETER,
            },
            "preprocess": {"resize": "stretch", "color": "rgb"},
        },
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start(cfg, notify)
    try:
        # one frame goes through (READY comes with the first guarded inference), then none
        shutil.copy(sorted((bundled / "digits_frames").glob("*.png"))[0], inbox / "first.png")
        notify.wait_for("READY=1", 30)
        time.sleep(1.0)  # past the watchdog's "frames are flowing" window (2 × 0.3 s)
        t0 = time.monotonic()
        time.sleep(2.0)
        assert notify.pings(t0, time.monotonic()) >= 3, notify.lines()[-20:]  # one every 0.3 s
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        notify.close()
    assert "Traceback" not in cfg.with_suffix(".log").read_text(errors="replace")
