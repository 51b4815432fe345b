"""A Coral that fails mid-run: after `model.delegate_lost_after` consecutive failures the agent
switches to the CPU model (`delegate_lost`), keeps publishing, retries the Edge TPU every
`model.edgetpu_retry_s` off its loop, and switches back once it works (`delegate_restored`).

There is no Coral here: tests/fake_edgetpu.py stands in for libedgetpu and the stick (see its
docstring for what it follows and what it cannot verify). The agent runs in this process, with
the real interpreter, a real mosquitto, and — for isolation = "process" — real worker processes
that really abort or hang.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, INTERPRETER
from fake_edgetpu import STATE_ENV, Coral, backend
from mqtt_helpers import Collector

from edge_agent.agent import Agent
from edge_agent.broker import LocalBroker
from edge_agent.config import AgentConfig, parse_config

TRANSFORM = json.loads((BUNDLED / "manifest.json").read_text())["models"]["digits_float"]["transform"]


@pytest.fixture
def coral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Coral:
    stick = Coral(tmp_path / "coral.state")
    monkeypatch.setenv(STATE_ENV, str(stick.path))
    monkeypatch.setenv("EDGE_AGENT_TEST_INTERPRETER", INTERPRETER)
    return stick


def config(tmp_path: Path, device: str, port: int, **model: Any) -> AgentConfig:
    return parse_config(
        {
            "device": {"id": device, "state_dir": str(tmp_path / "state")},
            "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 25},
            "model": {
                "path": str(BUNDLED / "digits_uint8.tflite"),  # stands in for a model compiled for the TPU
                "labels": str(BUNDLED / "digits_labels.txt"),
                "fallback_path": str(BUNDLED / "digits_float.tflite"),
                "interpreter": INTERPRETER,
                "delegate": "edgetpu",
                "edgetpu_device": "usb",
                "delegate_lost_after": 3,
                "edgetpu_retry_s": 1,
                **model,
            },
            "preprocess": {k: v for k, v in TRANSFORM.items() if k != "kind"},
            "guard": {"event_interval_s": 0},
            "mqtt": {"host": "127.0.0.1", "port": port},
        }
    )


@pytest.fixture
def run_agent() -> Iterator[Any]:
    started: list[tuple[Agent, threading.Thread]] = []

    def start(cfg: AgentConfig) -> Agent:
        agent = Agent(cfg, backend_factory=backend)
        thread = threading.Thread(target=agent.run, name="agent", daemon=True)
        thread.start()
        started.append((agent, thread))
        return agent

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


def is_event(kind: str) -> Any:
    return lambda m: m.leaf == "events" and m.payload["kind"] == kind


def result_from(model: str) -> Any:
    return lambda m: m.leaf == "results" and m.payload["model"]["name"] == model


def correct_share(results: list[dict[str, Any]]) -> float:
    ok = sum(1 for r in results if str(r["top"][0]["index"]) == r["frame"]["source"].split("_")[1][0])
    return ok / max(1, len(results))


def test_failing_edgetpu_switches_to_the_cpu_model_and_back(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Coral, run_agent: Any
) -> None:
    """invoke() raises on the TPU (inline): delegate_lost after 3 failures, results go on from the
    CPU model; a retry while the stick still fails changes nothing; once it works, back to the TPU."""
    run_agent(config(tmp_path, device, mosquitto.port))
    col.wait_for(result_from("digits_uint8.tflite"), 30, "a result from the TPU model")
    online = col.wait_status("online", 10)
    assert online.payload["model"]["delegate"] == "edgetpu"

    mark = col.mark()
    coral.set("error")
    lost = col.wait_for(is_event("delegate_lost"), 30, "delegate_lost", start=mark)
    assert lost.payload["detail"]["failures"] == 3
    assert "digits_float.tflite" in lost.payload["message"], lost.payload
    errors = [m for m in col.snapshot()[mark:] if is_event("model_error")(m)]
    assert len(errors) == 3 and all(e.payload["detail"]["reason"] == "invoke_failed" for e in errors)
    assert "EdgeTpuDelegateForCustomOp" in errors[0].payload["message"]
    after_lost = col.snapshot().index(lost)
    col.wait_for(
        lambda m: m.leaf == "status" and m.payload["model"]["delegate"] == "cpu",
        10,
        "a status naming the CPU",
        start=after_lost,
    )
    col.wait_for(result_from("digits_float.tflite"), 10, "results from the CPU model", start=after_lost)
    # retries come every second while the stick still fails: nothing changes, no event per retry
    threading.Event().wait(3.0)
    window = col.snapshot()[after_lost + 1 :]
    assert not [m for m in window if m.leaf == "events" and m.payload["kind"] in ("delegate_restored", "delegate_lost")]
    cpu_results = [m.payload for m in window if result_from("digits_float.tflite")(m)]
    assert len(cpu_results) >= 20 and correct_share(cpu_results) >= 0.9

    coral.set("ok")
    restored = col.wait_for(is_event("delegate_restored"), 15, "delegate_restored", start=after_lost)
    assert restored.payload["severity"] == "info"
    back = col.snapshot().index(restored)
    col.wait_for(result_from("digits_uint8.tflite"), 10, "results from the TPU again", start=back)
    status = col.wait_for(lambda m: m.leaf == "status", 10, "a status after the switch back", start=back)
    assert status.payload["model"] == {
        "name": "digits_uint8.tflite",
        "sha256": status.payload["model"]["sha256"],
        "delegate": "edgetpu",
    }
    assert status.payload["state"] == "online"


def test_aborting_edgetpu_in_the_worker_switches_to_the_cpu_model(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Coral, run_agent: Any
) -> None:
    """libedgetpu aborts the process on a USB transfer error: with isolation = "process" that is
    the worker, really killed by SIGABRT. Three crashes in a row: delegate_lost, the CPU model
    (in a worker of its own), then back to the TPU once the stick behaves."""
    run_agent(config(tmp_path, device, mosquitto.port, isolation="process", invoke_timeout_s=5))
    col.wait_for(result_from("digits_uint8.tflite"), 60, "a result from the TPU model")
    mark = col.mark()
    coral.set("abort")
    lost = col.wait_for(is_event("delegate_lost"), 60, "delegate_lost", start=mark)
    crashes = [m.payload for m in col.snapshot()[mark:] if is_event("inference_crash")(m)]
    assert len(crashes) == 3 and all("SIGABRT" in c["message"] for c in crashes), crashes
    after = col.snapshot().index(lost)
    col.wait_for(result_from("digits_float.tflite"), 30, "results from the CPU model", start=after)
    coral.set("ok")
    restored = col.wait_for(is_event("delegate_restored"), 60, "delegate_restored", start=after)
    col.wait_for(result_from("digits_uint8.tflite"), 30, "TPU results again", start=col.snapshot().index(restored))


def test_hanging_edgetpu_in_the_worker_is_lost_too(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Coral, run_agent: Any
) -> None:
    """A stick that hangs inside invoke(): each hang is cut at invoke_timeout_s (inference_hang);
    the third in a row switches to the CPU model."""
    run_agent(config(tmp_path, device, mosquitto.port, isolation="process", invoke_timeout_s=1))
    col.wait_for(result_from("digits_uint8.tflite"), 60, "a result from the TPU model")
    mark = col.mark()
    coral.set("hang")
    col.wait_for(is_event("delegate_lost"), 60, "delegate_lost", start=mark)
    hangs = [m.payload for m in col.snapshot()[mark:] if is_event("inference_hang")(m)]
    assert len(hangs) == 3
    col.wait_for(result_from("digits_float.tflite"), 30, "results from the CPU model", start=mark)


def test_missing_stick_at_start_runs_on_the_cpu_until_it_is_plugged_in(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Coral, run_agent: Any
) -> None:
    coral.set("absent")
    run_agent(config(tmp_path, device, mosquitto.port))
    ev = col.wait_for(is_event("delegate_unavailable"), 30, "delegate_unavailable")
    assert "Failed to load delegate from libedgetpu.so.1" in ev.payload["message"], ev.payload
    col.wait_for(result_from("digits_float.tflite"), 30, "results from the CPU model")
    coral.set("ok")
    col.wait_for(is_event("delegate_restored"), 15, "delegate_restored")
    col.wait_for(result_from("digits_uint8.tflite"), 15, "results from the TPU model")


def test_without_a_cpu_model_the_loss_is_critical_and_the_agent_stays_up(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, coral: Coral, run_agent: Any
) -> None:
    """The configured model is the only one, and a missing fallback file cannot be loaded: the
    agent says so (critical), goes degraded, and recovers through its normal model retry."""
    cfg = config(tmp_path, device, mosquitto.port, fallback_path=str(tmp_path / "absent.tflite"), retry_interval_s=1)
    agent = run_agent(cfg)
    col.wait_for(result_from("digits_uint8.tflite"), 30, "a result from the TPU model")
    mark = col.mark()
    coral.set("error")
    lost = col.wait_for(is_event("delegate_lost"), 30, "delegate_lost", start=mark)
    assert lost.payload["severity"] == "critical" and "absent.tflite" in lost.payload["message"]
    col.wait_status("degraded", 10, after=mark)
    coral.set("ok")
    col.wait_status("online", 30, after=col.snapshot().index(lost))
    col.wait_for(result_from("digits_uint8.tflite"), 15, "results again", start=col.snapshot().index(lost))
    assert agent.state == "online"
