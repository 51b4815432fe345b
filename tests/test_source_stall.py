"""The agent with a live source that freezes: a read() that blocks for good (a camera frozen in
its driver) is noticed after `source.stall_after_s`, raised as `source_stalled`, the source is
reopened, and results resume; the loop never blocks meanwhile (stats and status go on)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import Collector

import edge_agent.core.sources as sources_module
from edge_agent.agent import Agent
from edge_agent.broker import LocalBroker
from edge_agent.config import SourceConfig, parse_config
from edge_agent.sources.base import Frame, SourceProblem
from edge_agent.sources.synthetic import SyntheticSource


class FreezingCamera:
    """The real synthetic source, as a live one whose read() can be frozen from the test."""

    live = True
    opened = 0
    frozen = threading.Event()
    thawed = threading.Event()

    def __init__(self, cfg: SourceConfig, **_: Any) -> None:
        self.inner = SyntheticSource(cfg.options)  # type: ignore[arg-type]
        self.name = "camera"
        FreezingCamera.opened += 1

    def read(self) -> Frame | SourceProblem | None:
        if self.frozen.is_set():
            self.thawed.wait()  # blocks like a dequeue that never completes
        return self.inner.read()

    def release(self, frame: Frame) -> None:
        self.inner.release(frame)

    def close(self) -> None:
        pass


def test_a_frozen_live_source_is_stalled_reopened_and_results_resume(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_module, "open_source", FreezingCamera)  # the source supervisor opens sources
    cfg = parse_config(
        {
            "device": {"id": device, "state_dir": str(tmp_path / "state")},
            "source": {"kind": "synthetic", "width": 32, "height": 32, "fps": 20, "stall_after_s": 1.0},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
            "service": {"stats_interval_s": 1},
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
        }
    )
    agent = Agent(cfg)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        col.wait_for(lambda m: m.leaf == "results", 30, "a first result")
        mark = col.mark()
        FreezingCamera.frozen.set()
        stalled = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "source_stalled", 10, "source_stalled", start=mark
        )
        assert "camera: no frame for" in stalled.payload["message"]
        col.wait_status("degraded", 5, after=mark)
        # the loop is not blocked: stats keep coming while the camera is frozen
        n_stats = len([m for m in col.snapshot()[mark:] if m.leaf == "stats"])
        col.wait_for(lambda m: m.leaf == "stats", 5, "stats while frozen", start=col.mark())
        assert n_stats >= 1
        FreezingCamera.frozen.clear()
        FreezingCamera.thawed.set()
        after = col.snapshot().index(stalled)
        col.wait_status("online", 20, after=after)
        col.wait_for(lambda m: m.leaf == "results", 10, "results after the reopen", start=after)
        assert FreezingCamera.opened >= 2
    finally:
        FreezingCamera.thawed.set()
        agent.stop()
        thread.join(20)
    assert not thread.is_alive()
