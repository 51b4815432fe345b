"""Inference isolation: the interpreter in a child process (`[model] isolation = "process"`).

The faults are injected through the worker's test-only hook (EDGE_AGENT_TEST_WORKER_FAULT, read
in the child only): a real os.abort() and a real endless sleep inside the child.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import INTERPRETER

from edge_agent.config import ModelConfig
from edge_agent.errors import ModelError
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.worker import FAULT_ENV, WorkerModel, open_model


def _cfg(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig.model_validate({"path": str(path), "interpreter": INTERPRETER, **kw})


def _frames(info_shape: tuple[int, ...], dtype: np.dtype, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    if np.issubdtype(dtype, np.integer):
        lim = np.iinfo(dtype)
        return [rng.integers(lim.min, lim.max, size=info_shape, endpoint=True).astype(dtype) for _ in range(n)]
    return [rng.standard_normal(info_shape).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("name", ["digits_uint8.tflite", "digits_float.tflite"])
@pytest.mark.e2e
def test_outputs_equal_inline_bit_for_bit(bundled: Path, name: str) -> None:
    inline = load_model(_cfg(bundled / name))
    with WorkerModel(_cfg(bundled / name, isolation="process")) as worker:
        assert (worker.inputs, worker.outputs, worker.name) == (inline.inputs, inline.outputs, inline.name)
        assert worker.file.sha256 == inline.file.sha256 and worker.delegate == "cpu"
        info = inline.inputs[0]
        for frame in _frames(info.shape, info.dtype, 4):
            inline_view, worker_view = inline.input_view(0), worker.input_view(0)
            np.copyto(inline_view(), frame)
            np.copyto(worker_view(), frame)  # the parent writes straight into shared memory
            inline.invoke()
            worker.invoke()
            raw_a, out_a = inline.fetch_outputs()
            raw_b, out_b = worker.fetch_outputs()
            for a, b in zip([*raw_a, *out_a], [*raw_b, *out_b], strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert a.tobytes() == b.tobytes()
            # the pipeline's diagnosis reads the prepared input back through read_input
            got = worker.read_input(0)
            assert np.array_equal(got, inline.interpreter.get_tensor(info.index))


@pytest.mark.e2e
def test_open_model_follows_isolation(bundled: Path) -> None:
    inline = open_model(_cfg(bundled / "digits_uint8.tflite"))
    assert not isinstance(inline, WorkerModel)
    worker = open_model(_cfg(bundled / "digits_uint8.tflite", isolation="process"))
    try:
        assert isinstance(worker, WorkerModel)
    finally:
        assert isinstance(worker, WorkerModel)
        worker.close()


@pytest.mark.e2e
def test_load_errors_surface_from_the_child(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        WorkerModel(_cfg(tmp_path / "absent.tflite", isolation="process"))
    assert e.value.reason == "missing"


def _invoke_past_restart(worker: WorkerModel, limit: float = 20.0) -> None:
    """invoke(), going on while the worker is restarting (which invoke() says at once, without
    waiting); any other error is raised."""
    deadline = time.monotonic() + limit
    while True:
        try:
            worker.invoke()
            return
        except ModelError as err:
            if err.reason != "inference_restarting" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _run_until_ok(worker: WorkerModel, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            worker.invoke()
            return
        except ModelError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.e2e
def test_abort_in_the_child_is_an_inference_crash_and_recovers(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "abort-after:3")
    inline = load_model(_cfg(bundled / "digits_uint8.tflite"))
    with WorkerModel(_cfg(bundled / "digits_uint8.tflite", isolation="process"), backoff_s=0.1) as worker:
        frame = _frames(worker.inputs[0].shape, worker.inputs[0].dtype, 1)[0]
        np.copyto(worker.input_view(0)(), frame)
        first_pid = worker.pid
        for _ in range(3):
            worker.invoke()
        with pytest.raises(ModelError) as e:
            worker.invoke()
        assert e.value.reason == "inference_crash"
        assert "SIGABRT" in str(e.value)
        # the next frames restart the worker, and then it works (the hook aborts again only after 3 more)
        _invoke_past_restart(worker)
        assert worker.pid != first_pid and worker.restarts == 1
        np.copyto(inline.input_view(0)(), frame)
        inline.invoke()
        assert worker.fetch_outputs()[0][0].tobytes() == inline.fetch_outputs()[0][0].tobytes()


@pytest.mark.e2e
def test_hang_is_detected_within_the_deadline_and_recovers(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "hang-after:2")
    with WorkerModel(
        _cfg(bundled / "digits_uint8.tflite", isolation="process", invoke_timeout_s=1.0), backoff_s=0.1
    ) as worker:
        worker.invoke()
        worker.invoke()
        t0 = time.monotonic()
        with pytest.raises(ModelError) as e:
            worker.invoke()
        took = time.monotonic() - t0
        assert e.value.reason == "inference_hang"
        assert 0.9 <= took < 2.5, took
        _invoke_past_restart(worker)  # restarted
        worker.invoke()
        assert worker.restarts == 1


@pytest.mark.e2e
def test_crash_loop_is_capped(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "abort-after:0")
    with WorkerModel(
        _cfg(bundled / "digits_uint8.tflite", isolation="process"),
        backoff_s=0.05,
        backoff_max_s=0.2,
        restart_limit=3,
        restart_window_s=60.0,
    ) as worker:
        reasons = []
        while len(reasons) < 6:
            with pytest.raises(ModelError) as e:
                worker.invoke()
            if e.value.reason != "inference_restarting":
                reasons.append(e.value.reason)
            time.sleep(0.01)
        assert reasons == ["inference_crash"] * 4 + ["inference_crash_loop"] * 2
        assert worker.restarts == 3


@pytest.mark.e2e
def test_backoff_doubles_and_never_blocks(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between crashes, invoke() answers "inference_restarting" at once (the agent's loop goes on
    serving the broker and the watchdog); the crashes come 0.2, 0.4, 0.4 (capped) s apart plus a
    worker start each."""
    monkeypatch.setenv(FAULT_ENV, "abort-after:0")
    with WorkerModel(
        _cfg(bundled / "digits_uint8.tflite", isolation="process"), backoff_s=0.2, backoff_max_s=0.4
    ) as worker:
        crashes: list[float] = []
        slowest_restarting = 0.0
        while len(crashes) < 4:
            t0 = time.monotonic()
            with pytest.raises(ModelError) as e:
                worker.invoke()
            if e.value.reason == "inference_restarting":
                slowest_restarting = max(slowest_restarting, time.monotonic() - t0)
                time.sleep(0.005)
            else:
                assert e.value.reason == "inference_crash"
                crashes.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(crashes)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.4
        assert gaps[2] < gaps[1] + 1.0
        assert slowest_restarting < 0.1  # polls, never waits for the backoff or the load


@pytest.mark.e2e
def test_close_during_a_restart_leaves_no_process(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "abort-after:0")
    worker = WorkerModel(_cfg(bundled / "digits_uint8.tflite", isolation="process"), backoff_s=0.0)
    with pytest.raises(ModelError):
        worker.invoke()
    with pytest.raises(ModelError) as e:
        worker.invoke()  # starts the new child and returns at once
    assert e.value.reason == "inference_restarting"
    assert worker._loading is not None
    child = worker._loading[0]
    worker.close()
    assert not child.is_alive()


LEAK_SCRIPT = """
import numpy as np, sys
from edge_agent.config import ModelConfig
from edge_agent.runtime.worker import WorkerModel
cfg = ModelConfig.model_validate({"path": sys.argv[1], "interpreter": sys.argv[2], "isolation": "process"})
w = WorkerModel(cfg, backoff_s=0.05)
w.invoke()
raws, outs = w.fetch_outputs()   # views of shared memory still held while closing
w.close()
w2 = WorkerModel(cfg)
w2.invoke()
w2._kill()                       # a dead worker, then close
w2.close()
print("closed", flush=True)
"""


@pytest.mark.e2e
def test_shared_memory_is_released_on_close(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    before = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    proc = subprocess.run(
        [sys.executable, "-c", LEAK_SCRIPT, str(bundled / "digits_uint8.tflite"), INTERPRETER],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "closed" in proc.stdout
    assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    if Path("/dev/shm").is_dir():
        assert not {p for p in Path("/dev/shm").iterdir() if p.name.startswith("psm_")} - before


def test_config_bounds() -> None:
    with pytest.raises(ValueError):
        ModelConfig.model_validate({"path": "m.tflite", "invoke_timeout_s": 0})
    with pytest.raises(ValueError):
        ModelConfig.model_validate({"path": "m.tflite", "isolation": "thread"})
    assert ModelConfig.model_validate({"path": "m.tflite"}).isolation == "inline"
