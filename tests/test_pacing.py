"""Paced sources (`source.fps`): a frame's result goes out as soon as its invoke is done, never
after the wait for the next frame's slot; a file's frame time is when the agent took it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER

from edge_agent.agent import Agent
from edge_agent.config import parse_config
from edge_agent.core.lease import Lease
from edge_agent.sources.base import Frame, Stamp
from edge_agent.sources.capture import CaptureThread

FPS = 40
FRAMES = 24


def paced_agent(tmp_path: Path, port: int, device: str, *, overlap: bool) -> Agent:
    cfg = parse_config(
        {
            "device": {"id": device, "state_dir": str(tmp_path / f"state-{overlap}")},
            "source": {
                "kind": "images",
                "path": str(BUNDLED / "digits_frames"),
                "fps": FPS,
                "max_frames": FRAMES,
                "exit_when_done": True,
            },
            "model": {
                "path": str(BUNDLED / "digits_uint8.tflite"),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "interpreter": INTERPRETER,
                "overlap": overlap,
            },
            "mqtt": {"host": "127.0.0.1", "port": port},
        }
    )
    return Agent(cfg)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "synchronous"])
def test_a_result_is_published_before_the_loop_waits_for_the_next_slot(
    tmp_path: Path, mosquitto: Any, device: str, overlap: bool
) -> None:
    agent = paced_agent(tmp_path, mosquitto.port, device, overlap=overlap)
    taken: list[int] = []
    concluded: list[int] = []
    waits: list[tuple[int, int]] = []  # (frames taken, frames concluded) whenever the pacing waits
    handle, publish, idle, pace = agent._handle, agent.publisher.publish_result, agent._idle, agent._pace
    in_pace = threading.local()

    def handle_spy(lease: Lease) -> None:
        taken.append(lease.frame.seq)
        handle(lease)

    def publish_spy(frame: Frame, inf: Any, pipeline: Any) -> None:
        concluded.append(frame.seq)
        publish(frame, inf, pipeline)

    def pace_spy() -> None:
        in_pace.on = True
        try:
            pace()
        finally:
            in_pace.on = False

    def idle_spy(seconds: float) -> None:
        if getattr(in_pace, "on", False):
            waits.append((len(taken), len(concluded)))
        idle(seconds)

    agent._handle = handle_spy  # type: ignore[method-assign]
    agent.publisher.publish_result = publish_spy  # type: ignore[method-assign]
    agent._pace = pace_spy  # type: ignore[method-assign]
    agent._idle = idle_spy  # type: ignore[method-assign]
    assert agent.run() == 0
    assert len(taken) == FRAMES and sorted(concluded) == sorted(taken)
    assert len(waits) >= FRAMES // 2, "the pacing waited between frames (a 0.1 ms model at 40 fps)"
    late = [(t, c) for t, c in waits if c < t]
    assert not late, f"{len(late)} of {len(waits)} slot waits began with a frame not yet concluded: {late[:5]}"


class ReadAhead:
    """A file-like source that has every frame ready at once (a folder of images); it notes the
    time it stamped each frame with."""

    name = "files"

    def __init__(self) -> None:
        self._stamp = Stamp()
        self.pixels = np.zeros((4, 4, 3), np.uint8)
        self.stamped: dict[int, float] = {}

    def read(self) -> Frame | None:
        seq, ts, mono = self._stamp.next()
        self.stamped[seq] = mono
        return Frame(seq, ts, mono, self.name, pixels=self.pixels)

    def release(self, frame: Frame) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_read_ahead_frame_is_stamped_when_it_is_taken_a_live_one_when_captured() -> None:
    for policy in ("every", "latest"):
        src = ReadAhead()
        cap = CaptureThread(src, policy)  # type: ignore[arg-type]
        try:
            first = cap.take(5.0)
            assert isinstance(first, Frame)
            time.sleep(0.2)  # the thread has read the next frame by now, and waits (every) or replaces it (latest)
            before_mono, before_ts = time.monotonic(), time.time()
            frame = cap.take(5.0)
            assert isinstance(frame, Frame)
            if policy == "every":
                assert frame.seq == first.seq + 1  # nothing skipped
                assert frame.mono >= before_mono and frame.ts >= before_ts  # when taken
                assert src.stamped[frame.seq] < before_mono  # though read long before
            else:
                assert frame.mono == src.stamped[frame.seq]  # a live frame keeps its capture time
        finally:
            cap.close()
