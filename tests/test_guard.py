"""Tests for the output guard (edge_agent.guard) and event merging (edge_agent.events)."""

from __future__ import annotations

import itertools
import json
import math
from functools import cache

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import ModelConfig, PreprocessConfig
from edge_agent.events import Event, EventMerger
from edge_agent.guard import InputStats, OutputFault, check_outputs, count_nonfinite, diagnose
from edge_agent.preprocess import ImageTransform, Preprocessor, transform_from_config
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources import Frame

FLOAT_IN = TensorInfo("in", 0, (1, 8, 8, 3), np.dtype(np.float32), 0.0, 0)
UINT8_IN = TensorInfo("in", 0, (1, 8, 8, 3), np.dtype(np.uint8), 0.02, 128)


def out_info(name: str = "scores", index: int = 7, n: int = 10) -> TensorInfo:
    return TensorInfo(name, index, (1, n), np.dtype(np.float32), 0.0, 0)


class Lazy:
    """A lazy_input that counts its calls."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.value


def never() -> np.ndarray:
    raise AssertionError("lazy_input must not be called when every output is finite")


# ---------------------------------------------------------------------------------------
# check_outputs


def test_finite_outputs_pass_without_touching_the_input() -> None:
    outs = [
        (out_info(), np.linspace(-1e30, 1e30, 10, dtype=np.float32).reshape(1, 10)),
        (out_info("boxes", 8, 4), np.zeros((1, 4), np.float32)),
    ]
    assert check_outputs(outs, input_info=FLOAT_IN, lazy_input=never) is None


@pytest.mark.parametrize(
    ("bad", "kind", "counts", "label"),
    [
        ([math.nan] * 3, "nan_output", (3, 0, 0), "3 NaN"),
        ([math.inf] * 2, "inf_output", (0, 2, 0), "2 +Inf"),
        ([-math.inf], "inf_output", (0, 0, 1), "1 -Inf"),
        ([math.nan, math.inf, -math.inf, -math.inf], "nan_output", (1, 1, 2), "1 NaN, 1 +Inf, 2 -Inf"),
        ([math.inf, -math.inf], "inf_output", (0, 1, 1), "1 +Inf, 1 -Inf"),
    ],
)
def test_nonfinite_counts_kind_and_fraction(
    bad: list[float], kind: str, counts: tuple[int, int, int], label: str
) -> None:
    values = np.arange(20, dtype=np.float32).reshape(1, 20)
    values[0, 5 : 5 + len(bad)] = bad
    lazy = Lazy(np.full((1, 8, 8, 3), 0.5, np.float32))
    fault = check_outputs([(out_info(n=20), values)], input_info=FLOAT_IN, lazy_input=lazy)
    assert isinstance(fault, OutputFault)
    assert fault.kind == kind
    d = fault.detail
    assert (d["nan"], d["posinf"], d["neginf"]) == counts
    assert d["total"] == 20
    assert d["tensor"] == "scores"
    assert d["fraction"] == pytest.approx(len(bad) / 20)
    assert f"{label} of 20 values ({len(bad) / 20:.0%})" in fault.message
    assert "'scores'" in fault.message and "not published" in fault.message
    assert "\n" not in fault.message
    assert lazy.calls == 1
    assert d["input"] == {"min": 0.5, "max": 0.5, "mean": 0.5, "nonfinite": 0}
    json.dumps(d)  # the detail goes into an MQTT payload as is


def test_first_faulty_output_is_reported() -> None:
    good = np.zeros((1, 10), np.float32)
    bad1 = np.zeros((1, 4), np.float32)
    bad1[0, 0] = math.inf
    bad2 = np.full((1, 6), math.nan, np.float32)
    fault = check_outputs([(out_info("a", 1), good), (out_info("b", 2, 4), bad1), (out_info("c", 3, 6), bad2)])
    assert fault is not None
    assert fault.detail["tensor"] == "b" and fault.kind == "inf_output" and fault.detail["total"] == 4


def test_unnamed_output_is_named_by_index() -> None:
    fault = check_outputs([(out_info("", 42, 2), np.array([[math.nan, 1.0]], np.float32))])
    assert fault is not None and "output 42 has 1 NaN" in fault.message


def test_given_input_stats_spare_the_lazy_input() -> None:
    stats = InputStats(0.0, 255.0, 120.0, 0)
    fault = check_outputs(
        [(out_info(), np.full((1, 10), math.nan, np.float32))], input_stats=stats, input_info=FLOAT_IN, lazy_input=never
    )
    assert fault is not None
    assert fault.detail["input"]["max"] == 255.0
    assert fault.detail["fraction"] == 1.0


def test_without_input_information_the_diagnosis_is_generic() -> None:
    fault = check_outputs([(out_info(), np.full((1, 10), math.nan, np.float32))])
    assert fault is not None
    assert "the model produced non-finite values on this input" in fault.message
    assert "input" not in fault.detail


def test_raw_pixels_into_a_float_model_are_diagnosed() -> None:
    raw = np.random.default_rng(0).integers(0, 256, size=(1, 8, 8, 3)).astype(np.float32)
    lazy = Lazy(raw)
    fault = check_outputs([(out_info(), np.full((1, 10), math.nan, np.float32))], input_info=FLOAT_IN, lazy_input=lazy)
    assert fault is not None
    assert "raw 0-255 pixels" in fault.message
    assert "1/255" in fault.message and "0.00392156862745098" in fault.message
    assert fault.detail["input"]["min"] == float(raw.min()) and fault.detail["input"]["max"] == float(raw.max())
    assert lazy.calls == 1


@pytest.mark.parametrize(
    ("stats", "info", "phrase"),
    [
        (InputStats(0.0, 255.0, 117.0, 0), FLOAT_IN, "raw 0-255 pixels"),
        (InputStats(0.0, 255.0, 117.0, 0), UINT8_IN, "looks plausible"),  # pixels are right for an integer tensor
        (InputStats(-2.1, 2.6, 0.1, 0), FLOAT_IN, "looks plausible"),
        (InputStats(0.0, 1.0, 0.4, 0), FLOAT_IN, "looks plausible"),
        (InputStats(-5e4, 3.0, -10.0, 0), FLOAT_IN, "far outside any usual training range"),
        (InputStats(-1.0, 1.0, 0.0, 3), FLOAT_IN, "3 input values are NaN/Inf themselves"),
        (None, FLOAT_IN, "the model produced non-finite values"),
        (InputStats(0.0, 1.0, 0.5, 0), None, "the model produced non-finite values"),
    ],
)
def test_diagnose(stats: InputStats | None, info: TensorInfo | None, phrase: str) -> None:
    text = diagnose(stats, info)
    assert phrase in text
    if phrase != "raw 0-255 pixels":
        assert "raw 0-255" not in text


def test_input_stats_ignore_nonfinite_values() -> None:
    s = InputStats.of(np.array([1.0, math.nan, 3.0, -math.inf], np.float32))
    assert (s.minimum, s.maximum, s.mean, s.nonfinite) == (1.0, 3.0, 2.0, 2)
    empty = InputStats.of(np.array([math.nan, math.nan]))
    assert empty.nonfinite == 2 and math.isnan(empty.minimum)
    ints = InputStats.of(np.array([[0, 255]], np.uint8))
    assert (ints.minimum, ints.maximum, ints.mean, ints.nonfinite) == (0.0, 255.0, 127.5, 0)


def test_all_nan_input_reports_null_stats_in_json() -> None:
    lazy = Lazy(np.full((1, 4), math.nan, np.float32))
    fault = check_outputs([(out_info(), np.full((1, 10), math.nan, np.float32))], input_info=FLOAT_IN, lazy_input=lazy)
    assert fault is not None
    assert fault.detail["input"] == {"min": None, "max": None, "mean": None, "nonfinite": 4}
    assert "4 input values are NaN/Inf themselves" in fault.message
    json.dumps(fault.detail, allow_nan=False)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(
    size=st.integers(1, 64),
    data=st.data(),
)
def test_counts_match_numpy(size: int, data: st.DataObject) -> None:
    choices = st.sampled_from([0.0, 1.5, -3.0, 3e38, math.nan, math.inf, -math.inf])
    values = np.array(data.draw(st.lists(choices, min_size=size, max_size=size)), dtype=np.float32)
    nan, pos, neg = int(np.isnan(values).sum()), int(np.isposinf(values).sum()), int(np.isneginf(values).sum())
    assert count_nonfinite(values) == (nan, pos, neg)
    lazy = Lazy(np.zeros(3, np.float32))
    fault = check_outputs([(out_info(n=size), values.reshape(1, size))], input_info=FLOAT_IN, lazy_input=lazy)
    if nan == pos == neg == 0:
        assert fault is None and lazy.calls == 0
        return
    assert fault is not None and lazy.calls == 1
    assert fault.kind == ("nan_output" if nan else "inf_output")
    assert (fault.detail["nan"], fault.detail["posinf"], fault.detail["neginf"]) == (nan, pos, neg)
    assert fault.detail["fraction"] == round((nan + pos + neg) / size, 6)


# ---------------------------------------------------------------------------------------
# the bundled nan_prone model


@cache
def nan_prone() -> LoadedModel:
    return load_model(ModelConfig(path=str(BUNDLED / "nan_prone.tflite"), interpreter=INTERPRETER))


def manifest_transform(name: str) -> ImageTransform:
    tr = json.loads((BUNDLED / "manifest.json").read_text())["models"][name]["transform"]
    return transform_from_config(
        PreprocessConfig(
            resize=tr["resize"],
            interpolation=tr["interpolation"],
            color=tr["color"],
            scale=tr["scale"],
            mean=tuple(tr["mean"]),
            std=tuple(tr["std"]),
        )
    )


def frames(n: int) -> list[tuple[np.ndarray, int]]:
    files = sorted((BUNDLED / "digits_frames").glob("*.png"))[:n]
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        assert img is not None
        out.append((img, int(f.stem.split("_")[1])))
    return out


def run_guarded(m: LoadedModel, transform: ImageTransform, img: np.ndarray) -> tuple[OutputFault | None, np.ndarray]:
    Preprocessor(m.inputs[0], transform, ()).run(Frame(1, 0.0, 0.0, "t", pixels=img, order="bgr"), m.input_view(0))
    m.invoke()
    outs = [m.output(i) for i in range(len(m.outputs))]
    fault = check_outputs(
        list(zip(m.outputs, outs, strict=True)),
        input_info=m.inputs[0],
        lazy_input=lambda: m.interpreter.get_tensor(m.inputs[0].index),
    )
    return fault, outs[0]


def test_nan_prone_manifest_transform_is_pixel_over_255() -> None:
    t = manifest_transform("nan_prone")
    assert t.scale == pytest.approx(1 / 255) and t.mean == (0.0,) and t.std == (1.0,)


def test_nan_prone_fed_its_transform_is_finite_and_right() -> None:
    m = nan_prone()
    t = manifest_transform("nan_prone")
    right = 0
    sample = frames(40)
    for img, label in sample:
        fault, out = run_guarded(m, t, img)
        assert fault is None, fault
        right += int(np.argmax(out)) == label
    assert right / len(sample) >= 0.9


def test_nan_prone_fed_raw_pixels_is_caught_and_diagnosed() -> None:
    m = nan_prone()
    raw = ImageTransform(color="rgb", scale=1.0, mean=(0.0,), std=(1.0,))
    for img, _ in frames(10):
        fault, out = run_guarded(m, raw, img)
        assert not np.isfinite(out).all()
        assert fault is not None
        assert fault.kind == "nan_output"
        assert fault.detail["nan"] + fault.detail["posinf"] + fault.detail["neginf"] > 0
        assert fault.detail["total"] == 10
        assert fault.detail["input"]["max"] > 20 and fault.detail["input"]["min"] >= 0
        assert "raw 0-255 pixels" in fault.message and "1/255" in fault.message


# ---------------------------------------------------------------------------------------
# EventMerger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0  # time.monotonic() can be small: the first event must not need a head start

    def __call__(self) -> float:
        return self.now


def ev(kind: str, n: int = 0) -> Event:
    return Event(kind, "warning", f"{kind} #{n}", {"n": n})


def test_first_event_goes_out_at_once() -> None:
    clock = Clock()
    m = EventMerger(10.0, clock=clock)
    out = m.offer(ev("nan_output"))
    assert [e.message for e in out] == ["nan_output #0"]
    assert out[0].count == 1
    # another kind is independent
    assert [e.kind for e in m.offer(ev("source_error"))] == ["source_error"]


def test_repeats_within_the_interval_are_merged_into_one_summary() -> None:
    clock = Clock()
    m = EventMerger(10.0, clock=clock)
    assert len(m.offer(ev("x", 0))) == 1
    for i in range(1, 6):
        clock.now += 1.0
        assert m.offer(ev("x", i)) == []
    assert m.due() == []  # 5 s after the first: not yet
    clock.now += 5.0
    (summary,) = m.due()
    assert summary.kind == "x" and summary.count == 5
    assert summary.message == "x #5 (repeated 5×)"  # the latest, with the count
    assert summary.detail == {"n": 5}
    assert m.due() == [] and m.flush() == []


def test_a_single_held_event_keeps_its_message() -> None:
    clock = Clock()
    m = EventMerger(10.0, clock=clock)
    m.offer(ev("x", 0))
    clock.now += 1
    assert m.offer(ev("x", 1)) == []
    (held,) = m.flush()
    assert held.count == 1 and held.message == "x #1"


def test_offer_after_the_interval_releases_the_summary() -> None:
    clock = Clock()
    m = EventMerger(10.0, clock=clock)
    m.offer(ev("x", 0))
    clock.now += 2
    m.offer(ev("x", 1))
    m.offer(ev("x", 2))
    clock.now += 20
    out = m.offer(ev("x", 3))
    assert sum(e.count for e in out) + sum(e.count for e in m.flush()) == 3
    assert out[0].count == 2 and "repeated 2×" in out[0].message


def test_flush_returns_everything_held() -> None:
    clock = Clock()
    m = EventMerger(60.0, clock=clock)
    for kind in ("a", "b", "c"):
        m.offer(ev(kind))
    for i in range(4):
        m.offer(ev("a", i))
    m.offer(ev("b", 9))
    held = {e.kind: e.count for e in m.flush()}
    assert held == {"a": 4, "b": 1}
    assert m.flush() == []


def test_zero_interval_publishes_everything() -> None:
    m = EventMerger(0.0, clock=Clock())
    assert all(len(m.offer(ev("x", i))) == 1 for i in range(5))
    assert m.flush() == []


def test_counts_of_merged_events_are_carried() -> None:
    clock = Clock()
    m = EventMerger(10.0, clock=clock)
    m.offer(ev("x"))
    m.offer(Event("x", "error", "batch", count=7))
    m.offer(Event("x", "error", "batch", count=3))
    (s,) = m.flush()
    assert s.count == 10


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(
    interval=st.sampled_from([0.0, 0.5, 1.0, 5.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["nan_output", "inf_output", "source_error"]),
            st.sampled_from([0.0, 0.0, 0.1, 0.3, 0.5, 1.0, 2.5, 7.0]),  # time since the previous step
            st.booleans(),  # also poll due() like the agent loop does
        ),
        max_size=60,
    ),
)
def test_merger_properties(interval: float, steps: list[tuple[str, float, bool]]) -> None:
    clock = Clock()
    m = EventMerger(interval, clock=clock)
    published: list[tuple[float, Event]] = []
    offered: dict[str, int] = {}
    for i, (kind, dt, poll) in enumerate(steps):
        clock.now += dt
        first = kind not in offered
        offered[kind] = offered.get(kind, 0) + 1
        out = m.offer(Event(kind, "warning", f"{kind} {i}", {"i": i}))
        if first:
            # the first event of a kind goes out at once, unmerged
            assert any(e.kind == kind and e.count == 1 and e.message == f"{kind} {i}" for e in out)
        published += [(clock.now, e) for e in out]
        if poll:
            published += [(clock.now, e) for e in m.due()]
    # while running, a kind is published at most once per interval
    for kind in offered:
        times = [t for t, e in published if e.kind == kind]
        assert all(b - a >= interval for a, b in itertools.pairwise(times)), (kind, times)
    published += [(clock.now, e) for e in m.flush()]
    # nothing lost, nothing counted twice
    for kind, n in offered.items():
        assert sum(e.count for _, e in published if e.kind == kind) == n
    assert all(e.count >= 1 for _, e in published)
    assert m.flush() == []
