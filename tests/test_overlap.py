"""Overlap: invoke() in its own thread while the next frame is staged and the last result
published. The results must be exactly those of the synchronous path, frame for frame; the
reused output buffers must never be written while the loop still reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from conftest import BUNDLED, INTERPRETER

from edge_agent.agent import Agent
from edge_agent.config import ModelConfig, parse_config
from edge_agent.overlap import InvokeThread
from edge_agent.runtime.loader import load_model

TRANSFORM = {
    "resize": "stretch",
    "color": "rgb",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def run_agent(tmp_path: Path, port: int, device: str, *, overlap: bool) -> list[dict[str, Any]]:
    cfg = parse_config(
        {
            "device": {"id": device, "state_dir": str(tmp_path / f"state-{overlap}")},
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "exit_when_done": True},
            "model": {
                "path": str(BUNDLED / "digits_float.tflite"),
                "labels": str(BUNDLED / "digits_labels.txt"),
                "interpreter": INTERPRETER,
                "overlap": overlap,
            },
            "preprocess": TRANSFORM,
            "mqtt": {"host": "127.0.0.1", "port": port},
        }
    )
    got: list[dict[str, Any]] = []
    agent = Agent(cfg, on_result=got.append)
    assert agent.run() == 0
    return got


def test_overlapped_results_equal_the_synchronous_ones(tmp_path: Path, mosquitto: Any, device: str) -> None:
    sync = run_agent(tmp_path, mosquitto.port, device, overlap=False)
    over = run_agent(tmp_path, mosquitto.port, device, overlap=True)
    n = len(list((BUNDLED / "digits_frames").glob("*.png")))
    assert len(sync) == len(over) == n, "a frame was lost (the last one in flight must be finished too)"
    assert [r["frame"]["source"] for r in over] == [r["frame"]["source"] for r in sync]
    assert [r["top"] for r in over] == [r["top"] for r in sync]
    assert all(set(r["latency_ms"]) >= {"preprocess", "invoke", "guard", "postprocess", "total"} for r in over)


def test_outputs_are_not_fetched_over_until_released(bundled: Path) -> None:
    model = load_model(
        ModelConfig.model_validate({"path": str(bundled / "digits_uint8.tflite"), "interpreter": INTERPRETER})
    )
    inv = InvokeThread(model)
    rng = np.random.default_rng(3)
    info = model.inputs[0]
    try:
        frames = [rng.integers(0, 256, size=info.shape, dtype=np.uint8) for _ in range(2)]
        np.copyto(model.input_view(0)(), frames[0])
        inv.submit()
        first = inv.collect(10)
        assert first is not None and first.error is None
        held = [r.copy() for r in first.raws]
        np.copyto(model.input_view(0)(), frames[1])
        inv.submit()
        # the second invoke ends, but its outputs wait: the first are still being read
        assert inv.collect(0.5) is None
        assert all(np.array_equal(a, b) for a, b in zip(first.raws, held, strict=True))
        inv.release_outputs()
        second = inv.collect(10)
        assert second is not None and second.error is None
        assert second.t1 >= first.t2
    finally:
        inv.close()
