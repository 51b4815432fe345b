"""End to end: `edge-agent run` with `[model] isolation = "process"` and a worker that aborts.

The abort is a real os.abort() in the inference child, injected through the worker's test-only
hook (EDGE_AGENT_TEST_WORKER_FAULT). The agent process must stay up, publish an
`inference_crash` event, and publish results again after the worker's restart.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, retained, write_config

from edge_agent.broker import LocalBroker
from edge_agent.runtime.worker import FAULT_ENV


def test_agent_survives_an_aborting_inference_worker(
    tmp_path: Path,
    mosquitto: LocalBroker,
    device: str,
    col: Collector,
    bundled: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the self-test is invoke 1: the worker aborts on the 8th invoke, and on every 7th after a restart
    monkeypatch.setenv(FAULT_ENV, "abort-after:7")
    cfg = write_config(
        tmp_path,
        device=device,
        port=mosquitto.port,
        sections={
            "source": {"kind": "images", "path": str(bundled / "digits_frames"), "loop": True, "fps": 20},
            "model": {
                "path": str(bundled / "digits_uint8.tflite"),
                "labels": str(bundled / "digits_labels.txt"),
                "task": "classification",
                "interpreter": INTERPRETER,
                "isolation": "process",
                "invoke_timeout_s": 5,
            },
            "preprocess": {"resize": "stretch", "color": "rgb"},
            "guard": {"event_interval_s": 0},
        },
    )
    with AgentProcess(cfg) as agent:
        col.wait_for(lambda m: m.leaf == "results", 60, "a first result")
        crash = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "inference_crash", 60, "an inference_crash event"
        )
        assert crash.payload["severity"] == "error"
        assert crash.payload["detail"]["reason"] == "inference_crash"
        assert "SIGABRT" in crash.payload["message"], crash.payload
        after = col.snapshot().index(crash)
        col.wait_for(lambda m: m.leaf == "results", 60, "a result after the restart", start=after + 1)
        assert agent.running(), agent.output
        assert [e for e in col.on("events") if e["kind"] == "model_error"] == []
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.output
        assert "Traceback" not in agent.output, agent.output
    assert retained(mosquitto.port, f"edge/{device}/status")["state"] == "offline"
