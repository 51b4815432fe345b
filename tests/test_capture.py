"""The capture thread: every item from file sources, the newest frame from live ones, lent
buffers given back, a blocked or failing source never blocking or crashing the consumer."""

from __future__ import annotations

import mmap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.base import MIN_LENT, Frame, SlotPool, SourceProblem
from edge_agent.sources.capture import NOTHING, CaptureThread
from edge_agent.sources.images import ImageFolderSource
from edge_agent.sources.synthetic import SyntheticSource


def drain(cap: CaptureThread, limit: float = 20.0) -> list[Frame | SourceProblem]:
    out: list[Frame | SourceProblem] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        item = cap.take(0.5)
        if item is None:
            return out
        if item is NOTHING:
            continue
        assert isinstance(item, Frame | SourceProblem)
        out.append(item)
        if isinstance(item, Frame):
            cap.release(item)
    raise AssertionError("the source did not end")


def test_every_policy_delivers_each_image_in_order_with_problems_in_place(tmp_path: Path, bundled: Path) -> None:
    names = sorted(p.name for p in (bundled / "digits_frames").glob("*.png"))[:12]
    for n in names:
        (tmp_path / n).write_bytes((bundled / "digits_frames" / n).read_bytes())
    (tmp_path / names[5]).write_bytes(b"not a png")  # one bad file among them
    cap = CaptureThread(ImageFolderSource(SourceConfig(kind="images", path=str(tmp_path)).options), "every")
    try:
        time.sleep(0.3)  # a slow consumer: with "every", nothing is skipped
        got = drain(cap)
    finally:
        cap.close()
    assert [i.source for i in got] == names
    assert isinstance(got[5], SourceProblem) and "not a decodable" in got[5].message
    assert cap.skipped == 0


class Recording:
    """A real synthetic source, with the lending watched: how many frames are out at once."""

    def __init__(self, **cfg: object) -> None:
        self.inner = SyntheticSource(SourceConfig(kind="synthetic", width=64, height=48, **cfg).options)  # type: ignore[arg-type]
        self.name = self.inner.name
        self.live = True
        self.out = 0
        self.most_out = 0
        self.lock = threading.Lock()
        self.closed = False

    def read(self) -> Frame | SourceProblem | None:
        item = self.inner.read()
        with self.lock:
            self.out += 1
            self.most_out = max(self.most_out, self.out)
        return item

    def release(self, frame: Frame) -> None:
        with self.lock:
            self.out -= 1
        self.inner.release(frame)

    def close(self) -> None:
        self.closed = True


def test_latest_policy_gives_the_newest_frame_and_counts_the_skipped() -> None:
    src = Recording()
    cap = CaptureThread(src, "latest")
    taken: list[Frame] = []
    try:
        for _ in range(20):
            time.sleep(0.01)  # a consumer slower than the source
            item = cap.take(1.0)
            assert isinstance(item, Frame)
            # the frame's pixels are intact while held, although the source goes on producing
            copy = item.pixels.copy() if item.pixels is not None else None
            time.sleep(0.005)
            assert copy is not None and np.array_equal(copy, item.pixels)
            taken.append(item)
            cap.release(item)
    finally:
        cap.close()
    seqs = [f.seq for f in taken]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert cap.skipped >= 20, "a fast source and a slow consumer: frames were replaced"
    assert seqs[-1] - seqs[0] > len(seqs), "the consumer did not get the newest frames"
    assert src.most_out <= MIN_LENT, src.most_out
    assert src.inner._slots.grown == 0, "the pool grew: a lent buffer was held too long"
    assert src.closed


class Blocking:
    """A source whose read() blocks until told (a camera frozen inside its driver call)."""

    name = "blocking"
    live = True

    def __init__(self) -> None:
        self.go = threading.Event()
        self.closed = threading.Event()

    def read(self) -> Frame | SourceProblem | None:
        self.go.wait()
        return None

    def release(self, frame: Frame) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


def test_a_blocked_read_never_blocks_the_consumer_and_close_returns() -> None:
    src = Blocking()
    cap = CaptureThread(src, "latest")
    t0 = time.monotonic()
    assert cap.take(0.2) is NOTHING
    assert time.monotonic() - t0 < 1.0
    time.sleep(0.1)
    assert time.monotonic() - cap.last_frame_mono >= 0.3  # what the agent's stall check reads
    t0 = time.monotonic()
    cap.close()
    assert time.monotonic() - t0 < 3.0
    assert not src.closed.is_set(), "closed under a read() still running"
    src.go.set()  # the driver call returns at last: the thread closes the source itself
    assert src.closed.wait(5)


class MappedFrames:
    """A live source whose frames are views of mmap'd buffers, as a camera's: close() unmaps them,
    which fails (BufferError) while any view is alive. Giving back the frame the capture thread
    held is slow, and the next read() returns exactly then: the thread's closing race."""

    name = "mapped"
    live = True

    def __init__(self) -> None:
        self.maps = [mmap.mmap(-1, 4 * 4 * 3) for _ in range(2)]
        self.reads = 0
        self.giving_back = threading.Event()
        self.closers: list[str] = []
        self.unmap_failures = 0

    def read(self) -> Frame | SourceProblem | None:
        self.reads += 1
        if self.reads > 1:
            self.giving_back.wait(5)  # the second frame arrives while close() gives the first back
        pixels = np.frombuffer(self.maps[(self.reads - 1) % 2], dtype=np.uint8).reshape(4, 4, 3)
        return Frame(seq=self.reads, ts=time.time(), mono=time.monotonic(), source="mapped", pixels=pixels)

    def release(self, frame: Frame) -> None:
        if threading.current_thread() is threading.main_thread():
            self.giving_back.set()
            time.sleep(0.3)

    def close(self) -> None:
        self.closers.append(threading.current_thread().name)
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:
                self.unmap_failures += 1


def test_the_source_is_closed_once_and_only_after_every_view_of_its_buffers_is_gone() -> None:
    src = MappedFrames()
    cap = CaptureThread(src, "latest")
    deadline = time.monotonic() + 5
    while cap._ready is None and time.monotonic() < deadline:  # the first frame waits, untaken
        time.sleep(0.01)
    cap.close()
    assert src.reads == 2
    assert src.closers == [threading.main_thread().name], "closed once, by close() (the read had returned)"
    assert src.unmap_failures == 0, "the source was closed while a frame still pointed into its buffers"


class Failing:
    name = "failing"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.n = 0
        self.pool = SlotPool((4, 4, 3))

    def read(self) -> Frame | SourceProblem | None:
        self.n += 1
        if self.n > 3:
            raise self.exc
        return Frame(seq=self.n, ts=time.time(), mono=time.monotonic(), source="x", pixels=self.pool.acquire())

    def release(self, frame: Frame) -> None:
        self.pool.give_back(frame.pixels)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (SourceError("camera unplugged"), "camera unplugged"),
        (ValueError("a bug\nwith a second line"), "failing failed: ValueError: a bug"),
    ],
)
def test_a_failing_source_raises_after_its_frames(exc: Exception, expected: str) -> None:
    cap = CaptureThread(Failing(exc), "every")
    try:
        for seq in (1, 2, 3):
            item = cap.take(2.0)
            assert isinstance(item, Frame) and item.seq == seq
            cap.release(item)
        with pytest.raises(SourceError) as e:
            cap.take(2.0)
        assert str(e.value) == expected
    finally:
        cap.close()


def test_slot_pool_reuses_buffers_and_finds_views() -> None:
    pool = SlotPool((8, 10, 3), count=2)
    a, b = pool.acquire(), pool.acquire()
    pool.give_back(a[:, :6])  # a cropped view of a slot (a padded camera row) gives the slot back
    c = pool.acquire()
    assert c is a and pool.grown == 0
    d = pool.acquire()  # more than lent: a new buffer, never one still held
    assert d is not b and d is not c and pool.grown == 1
    pool.give_back(np.zeros(3))  # not ours: ignored
    assert pool.lent == 3
