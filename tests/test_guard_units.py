"""The guard's parts in isolation: escalation, output saturation and stuck outputs, frozen
frames, the input-check budget, and the allocation-free finiteness test."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.config import GuardConfig, parse_config
from edge_agent.escalation import Escalation
from edge_agent.guard import OutputGuard, all_finite
from edge_agent.input_guard import InputGuard
from edge_agent.pipeline import Fault, Pipeline
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources.base import Frame


def out_info(shape: tuple[int, ...] = (1, 10), dtype: type = np.float32) -> TensorInfo:
    q = dtype != np.float32
    return TensorInfo("scores", 7, shape, np.dtype(dtype), 1 / 256 if q else 0.0, 0)


# ---- escalation ------------------------------------------------------------------------------


def test_escalation_degrades_acts_and_recovers() -> None:
    e = Escalation(degrade_after=3, act_after=5, recover_after=2)
    steps = [e.fault() for _ in range(11)]
    assert steps == [None, None, "degrade", None, "act", None, None, None, None, "act", None]
    assert e.good() is None  # one good frame is not yet a recovery
    assert e.good() == "recover"
    assert e.good() is None  # only once
    # a good frame ends a fault streak: degrade counts from scratch
    assert [e.fault(), e.fault(), e.good(), e.fault(), e.fault(), e.fault()] == [
        None,
        None,
        None,
        None,
        None,
        "degrade",
    ]


@given(st.lists(st.booleans(), max_size=300))
def test_escalation_never_recovers_without_degrading(seq: list[bool]) -> None:
    e = Escalation(degrade_after=4, act_after=9, recover_after=3)
    degraded = False
    for bad in seq:
        step = e.fault() if bad else e.good()
        if step in ("degrade", "act"):
            degraded = True
        if step == "recover":
            assert degraded
            degraded = False
        assert e.degraded == degraded


# ---- finiteness without allocation -----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_all_finite_agrees_with_numpy(values: list[float]) -> None:
    x = np.asarray(values, dtype=np.float32)
    assert all_finite(x) == bool(np.isfinite(x).all())


def test_all_finite_does_not_overflow_on_large_finite_values() -> None:
    x = np.full(10_000, np.finfo(np.float32).max, dtype=np.float32)
    assert all_finite(x)  # a float32 accumulator would reach +Inf here
    assert all_finite(np.array([1, 2], np.uint8))


def test_output_check_allocates_nothing_per_frame() -> None:
    x = np.random.default_rng(0).random((1, 1001), dtype=np.float32)
    g = OutputGuard((out_info((1, 1001)),), pinned_fraction=0.5, stuck_after=100)
    raws = [np.zeros((1, 1001), np.uint8)]
    for _ in range(10):
        g.finite([x])
        g.saturated(raws)
        g.stuck([x], input_changed=True)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        g.finite([x])
        g.saturated(raws)
        g.stuck([x], input_changed=True)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # nothing is kept, and nothing array-sized is made: the 1001 floats alone would be 4 KB,
    # the boolean scratch of np.isfinite 1 KB; what remains is Python's own call overhead
    assert current - base < 256, f"{current - base} bytes retained over 1000 frames"
    assert peak - base < 1500, f"{peak - base} bytes at peak"


# ---- saturation and stuck outputs ------------------------------------------------------------


def test_integer_outputs_pinned_at_max_are_saturated() -> None:
    g = OutputGuard((out_info((1, 10), np.uint8),), pinned_fraction=0.5, stuck_after=0)
    softmax_like = np.zeros((1, 10), np.uint8)
    softmax_like[0, 3] = 255  # one confident class: normal
    assert g.saturated([softmax_like]) is None
    assert g.saturated([np.zeros((1, 10), np.uint8)]) is None  # all at min is a quiet output, not "every label fires"
    fires = np.full((1, 10), 255, np.uint8)
    fault = g.saturated([fires])
    assert fault is not None and fault.kind == "output_saturated" and fault.blocking
    assert "every label fires" in fault.message and fault.detail["pinned"] == 10


def test_float_outputs_are_never_saturated() -> None:
    g = OutputGuard((out_info(),), pinned_fraction=0.5, stuck_after=0)
    assert g.saturated([np.full((1, 10), 1.0, np.float32)]) is None


def test_stuck_needs_changing_inputs() -> None:
    g = OutputGuard((out_info(),), pinned_fraction=0.5, stuck_after=3)
    same = np.full((1, 10), 0.1, np.float32)
    # identical outputs for identical inputs prove nothing
    assert all(g.stuck([same], input_changed=False) is None for _ in range(10))
    results = [g.stuck([same], input_changed=True) for _ in range(3)]
    assert results[:2] == [None, None]
    fault = results[2]
    assert fault is not None and fault.kind == "output_stuck" and not fault.blocking
    assert "identical over 3 checked frames while the input changed" in fault.message
    # a changing output resets the count
    g2 = OutputGuard((out_info(),), pinned_fraction=0.5, stuck_after=3)
    for i in range(10):
        assert g2.stuck([np.full((1, 10), float(i), np.float32)], input_changed=True) is None


# ---- frozen frames and the sampling budget ---------------------------------------------------


def frame(pixels: np.ndarray, seq: int = 1) -> Frame:
    return Frame(seq, 0.0, 0.0, "cam", pixels=pixels, order="bgr")


def test_frozen_frames_are_noticed_and_changes_reset() -> None:
    g = InputGuard(GuardConfig(frozen_after=4), expected_range=None, range_origin="")
    still = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    faults = [g.observe(frame(still, i)) for i in range(5)]
    assert faults[:4] == [None] * 4 and faults[4] is not None
    assert faults[4].kind == "input_frozen" and "5 checked frames" in faults[4].message and not faults[4].blocking
    moved = still.copy()
    moved[::16, ::16] ^= 1  # a change on the sampled grid
    assert g.observe(frame(moved)) is None and g.identical_frames == 0 and g.input_changed


def test_frozen_detection_is_off_at_zero() -> None:
    g = InputGuard(GuardConfig(frozen_after=0), expected_range=None, range_origin="")
    still = np.zeros((10, 10, 3), np.uint8)
    assert all(g.observe(frame(still)) is None for _ in range(100))


def test_budget_sets_how_often_inputs_are_checked() -> None:
    g = InputGuard(GuardConfig(budget_percent=1.0), expected_range=None, range_origin="")
    assert g.due()  # not measured yet: check
    g.note_invoke(10.0)  # 10 ms per invoke
    g._check_ms = 0.5  # 0.5 ms per check: 1% of 10 ms allows one check in 5 frames
    pattern = [g.due() for _ in range(20)]
    assert sum(pattern) == 4
    fixed = InputGuard(GuardConfig(input_check_every=3), expected_range=None, range_origin="")
    assert sum(fixed.due() for _ in range(30)) == 10
    off = InputGuard(GuardConfig(check_inputs=False), expected_range=None, range_origin="")
    assert not any(off.due() for _ in range(10))


@pytest.mark.parametrize("bad", [(1.0, 1.0), (2.0, -2.0), (math.inf, 1.0)])
def test_expected_range_must_be_an_interval(bad: tuple[float, float]) -> None:
    with pytest.raises(ValidationError):
        GuardConfig(expected_input_range=bad)


def test_a_delegate_that_gives_nan_where_the_cpu_does_not_is_blamed() -> None:
    """No Coral here: the delegate's NaN output is simulated on a CPU-loaded model, marked as
    running on the Edge TPU. What is real: the re-check loads a fresh CPU interpreter of the same
    file, feeds it the very input the "delegate" failed on, and finds its outputs finite. What
    only a device with a Coral can verify: that libedgetpu failures look like this."""

    cfg = parse_config(
        {
            "model": {"path": str(BUNDLED / "digits_float.tflite"), "interpreter": INTERPRETER},
            "preprocess": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }
    )
    p = Pipeline.load(cfg)
    p.model.delegate = "edgetpu"
    real_fetch = p.model.fetch_outputs

    def broken_delegate() -> tuple[list[np.ndarray], list[np.ndarray]]:
        raws, outs = real_fetch()
        outs[0][...] = np.nan
        return raws, outs

    p.model.fetch_outputs = broken_delegate  # type: ignore[method-assign]
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outcome = p.process(Frame(1, 0.0, 0.0, "cam", pixels=pixels, order="bgr"))
    assert isinstance(outcome, Fault) and outcome.fault.kind == "nan_output"
    assert "gives finite outputs on the CPU, so the edgetpu delegate is at fault" in outcome.fault.message


def test_only_the_rows_an_ssd_op_wrote_are_checked_for_nan() -> None:
    """SSD's detection op fills `count` rows of its [1, N, 4] / [1, N] outputs; the rest is memory
    it never wrote (another tensor's leftovers, NaN included): not a fault. NaN inside the rows
    it wrote is one."""
    from edge_agent.guard import OutputGuard  # noqa: PLC0415
    from edge_agent.runtime.tensors import TensorInfo  # noqa: PLC0415

    infos = tuple(
        TensorInfo(name=n, index=i, shape=s, dtype=np.dtype(np.float32), scale=0.0, zero_point=0)
        for i, (n, s) in enumerate((("boxes", (1, 10, 4)), ("classes", (1, 10)), ("scores", (1, 10)), ("count", (1,))))
    )
    g = OutputGuard(infos, pinned_fraction=0.9, stuck_after=0)
    outs = [np.full(i.shape, np.nan, np.float32) for i in infos]
    outs[3][0] = 3.0
    for o in outs[:3]:
        o[0, :3] = 0.5
    assert not g.finite(outs), "without knowing the rows in use, the leftovers count"
    g.rows_in_use = lambda o: {0: int(o[3][0]), 1: int(o[3][0]), 2: int(o[3][0])}
    assert g.finite(outs)
    outs[2][0, 1] = np.nan
    assert not g.finite(outs)
