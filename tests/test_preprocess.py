"""Tests for edge_agent.preprocess: the compiled plan against the float64 reference
(edge_agent.reference, its own resize), geometry, vectors, and the bundled models."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_agent.preprocess as preprocess
from edge_agent.config import FeatureConfig, ModelConfig, PreprocessConfig, SourceConfig
from edge_agent.errors import PreprocessError
from edge_agent.preprocess import (
    Geometry,
    ImagePlan,
    ImageTransform,
    InputLayout,
    Prepared,
    Preprocessor,
    build_tables,
    compare_transforms,
    table_identity_steps,
    transform_from_config,
    transform_from_metadata,
)
from edge_agent.reference import (
    reference_color,
    reference_from_resized,
    reference_prepare,
    reference_resize,
    reference_tolerance,
    round_half_away,
)
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources import Frame
from edge_agent.sources.csv_rows import CsvRowSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERP = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
KERNELS: tuple[preprocess.KernelName, ...] = ("copy", "lut", "affine", "planes")
PROPERTY = settings(deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def info_of(shape: tuple[int, ...], dtype: Any = np.float32, scale: float = 0.0, zero_point: int = 0) -> TensorInfo:
    return TensorInfo(name="input", index=0, shape=shape, dtype=np.dtype(dtype), scale=scale, zero_point=zero_point)


def frame_of(pixels: np.ndarray, order: str = "bgr", seq: int = 1) -> Frame:
    return Frame(seq=seq, ts=0.0, mono=0.0, source="test", pixels=pixels, order=order)  # type: ignore[arg-type]


def run_plan(pp: Preprocessor, pixels: np.ndarray, order: str = "bgr") -> np.ndarray:
    tensor = np.full(pp.info.shape, 77, dtype=pp.info.dtype)
    assert pp.run(frame_of(pixels, order), lambda: tensor).prepared == Prepared()
    return tensor


def textured(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A frame with distinct channels, smooth parts and sharp edges (H×W when channels = 1)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[: h // 3, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, : w // 4, 1] = 255
    img[h // 2 :, w // 2 :] = cv2.GaussianBlur(img, (0, 0), 2)[h // 2 :, w // 2 :]
    return img if channels == 3 else np.ascontiguousarray(img[:, :, 1])


def by_channel(values: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Per-channel values shaped to broadcast against the tensor."""
    lay = InputLayout.of(info)
    shape = [1] * len(info.shape)
    shape[len(info.shape) - 3 if lay.nchw else -1] = lay.channels
    return np.broadcast_to(values, (lay.channels,)).reshape(shape)


def float16_ulp(ref: np.ndarray) -> np.ndarray:
    return np.asarray(np.spacing(np.abs(ref).astype(np.float16)), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# the reference itself: its resize and gray conversion against OpenCV's


@settings(PROPERTY, max_examples=150)
@given(
    sw=st.integers(1, 40),
    sh=st.integers(1, 40),
    dw=st.integers(1, 40),
    dh=st.integers(1, 40),
    channels=st.sampled_from([1, 3]),
    interpolation=st.sampled_from(list(INTERP)),
    seed=st.integers(0, 2**16),
)
def test_reference_resize_agrees_with_cv2_within_one_grey_level(
    sw: int, sh: int, dw: int, dh: int, channels: int, interpolation: str, seed: int
) -> None:
    img = textured(sh, sw, seed, channels)
    want = cv2.resize(img, (dw, dh), interpolation=INTERP[interpolation]).astype(np.float64)
    got = reference_resize(img, (dw, dh), interpolation)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1.0
    if interpolation == "nearest":  # the same pixels are picked: no arithmetic to differ in
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("interpolation", list(INTERP))
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((640, 480), (224, 224)),
        ((640, 480), (320, 240)),
        ((300, 300), (640, 480)),
        ((24, 33), (300, 300)),
        ((97, 13), (11, 200)),
    ],
)
def test_reference_resize_at_camera_sizes(src: tuple[int, int], dst: tuple[int, int], interpolation: str) -> None:
    # (24, 33) → (300, 300) with area: OpenCV rounds the enlarging weight to float32, which
    # decides whether row 100 reads source row 10 or 11 (the reference does the same)
    img = textured(src[1], src[0], seed=7)
    want = cv2.resize(img, dst, interpolation=INTERP[interpolation]).astype(np.float64)
    diff = np.abs(reference_resize(img, dst, interpolation) - want)
    assert diff.max() <= 1.0
    assert diff.mean() < 0.2  # off by a level only where OpenCV's fixed point rounds the other way


def test_reference_gray_is_opencvs_within_one_level_on_few_colours() -> None:
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    want = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float64)
    got = reference_color(bgr, "bgr", "gray")[:, :, 0]
    diff = np.abs(got - want)
    assert diff.max() <= 1.0
    assert np.mean(diff > 0) < 0.005  # OpenCV 4 rounds in 14-bit fixed point, OpenCV 5 in 15-bit
    np.testing.assert_array_equal(reference_color(bgr, "bgr", "gray"), reference_color(bgr[:, :, ::-1], "rgb", "gray"))


# ---------------------------------------------------------------------------------------
# the fused pass against the reference, on random specs


@dataclass(frozen=True)
class Case:
    transform: ImageTransform
    info: TensorInfo
    frame: np.ndarray
    order: str

    @property
    def through_gray(self) -> bool:
        """Color frames into a gray model: OpenCV's fixed-point gray may differ by a level."""
        return self.transform.color == "gray" and self.frame.ndim == 3


TARGETS = ("float32", "float32", "float16", "uint8", "int8", "uint8 unquantized", "uint8 identity")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    color = draw(st.sampled_from(["rgb", "bgr", "gray"]), label="color")
    channels = 1 if color == "gray" else 3
    nchw = draw(st.booleans(), label="nchw")
    h = draw(st.integers(1, 20), label="model height")
    w = draw(st.integers(4, 20), label="model width")  # 1×C×H×W with W = 1 or 3 reads as NHWC
    shape = (1, channels, h, w) if nchw else (1, h, w, channels)
    target = draw(st.sampled_from(TARGETS), label="target")
    resize = draw(st.sampled_from(["stretch", "letterbox", "center_crop"]), label="resize")
    interpolation = draw(st.sampled_from(list(INTERP)), label="interpolation")
    pad = draw(st.integers(0, 255), label="pad")
    if target == "uint8 identity":
        transform = ImageTransform(resize, interpolation, color, pad_value=pad)
        quant = draw(st.sampled_from([(1.0, 0), (0.0, 0)]), label="quantization")
        info = info_of(shape, np.uint8, *quant)
    else:
        # pixel·scale spans u = 255·scale; mean in [−u/2, u] and std in [u/10, 2u] keep
        # prepared values within ±15, where float32 holds 1e-5
        scale = draw(st.sampled_from([1.0, 1 / 255, 1 / 127.5, 1 / 128]), label="scale")
        u = 255 * scale
        n = draw(st.sampled_from([1, channels]), label="values per mean/std")
        mean = tuple(u * m for m in draw(st.lists(st.floats(-0.5, 1.0), min_size=n, max_size=n), label="mean"))
        std = tuple(u * s for s in draw(st.lists(st.floats(0.1, 2.0), min_size=n, max_size=n), label="std"))
        transform = ImageTransform(resize, interpolation, color, scale, mean, std, pad)
        if target in ("uint8", "int8"):
            dtype = np.dtype(target)
            lim = np.iinfo(dtype)
            qscale = draw(st.floats(0.005, 0.25), label="tensor scale")
            zp = draw(st.integers(int(lim.min), int(lim.max)), label="zero point")
            info = info_of(shape, dtype, qscale, zp)
        elif target == "uint8 unquantized":
            info = info_of(shape, np.uint8)
        else:
            info = info_of(shape, np.dtype(target))
    if draw(st.integers(0, 3), label="frame at the model's size") == 3:
        fh, fw = h, w
    else:
        fh, fw = draw(st.integers(1, 40), label="frame height"), draw(st.integers(1, 40), label="frame width")
    order = draw(st.sampled_from(["bgr", "rgb", "gray"]), label="frame order")
    frame = textured(fh, fw, draw(st.integers(0, 2**16), label="seed"), 1 if order == "gray" else 3)
    return Case(transform, info, frame, order)


def kernels_for(case: Case) -> list[preprocess.KernelName]:
    plan = ImagePlan(case.transform, case.info, case.frame.shape, kernel="auto", prefer="lut")
    return plan.possible_kernels()


@settings(PROPERTY, max_examples=400)
@given(case=cases())
def test_fused_pass_equals_the_reference_on_the_same_resized_pixels(case: Case) -> None:
    """Whatever the kernel, the one pass after the resize is the reference's arithmetic."""
    t, info = case.transform, case.info
    possible = kernels_for(case)
    assert set(possible) <= set(KERNELS)
    for kernel in KERNELS:
        if kernel not in possible:
            with pytest.raises(PreprocessError, match=f"kernel '{kernel}' cannot write"):
                ImagePlan(t, info, case.frame.shape, kernel=kernel)
            continue
        plan = ImagePlan(t, info, case.frame.shape, kernel=kernel)
        assert plan.kernel == kernel
        tensor = np.full(info.shape, 77, dtype=info.dtype)
        plan.run(case.frame, case.order, tensor)
        resized = plan.resize(case.frame)
        if plan.direct:
            assert resized is case.frame
        want = reference_from_resized(resized, case.order, t, info)
        got = tensor.astype(np.float64)
        assert got.shape == want.shape
        if info.is_integer:
            tol = np.ones_like(want)  # one quantization step
        elif info.dtype == np.float16:
            tol = float16_ulp(want)
        else:
            tol = np.full_like(want, 1e-5)
        diff = np.abs(got - want)
        if case.through_gray:
            # where OpenCV's fixed-point gray is a level off the exact one: one more grey level
            tol = tol + np.broadcast_to(by_channel(reference_tolerance(t, info, grey_levels=1.0), info), want.shape)
        assert np.all(diff <= tol), (kernel, float(diff.max()))
        if kernel in ("lut", "planes", "copy") and not case.through_gray:
            # the table holds the reference's values exactly
            np.testing.assert_array_equal(got, want)


@settings(PROPERTY, max_examples=250)
@given(case=cases())
def test_plan_equals_the_reference_through_the_resize(case: Case) -> None:
    """The reference's own resize against cv2 in the plan: one grey level (two for color →
    gray, where both resize and gray conversion may round differently) × scale / std per
    channel, plus one step for integer targets."""
    t, info = case.transform, case.info
    pp = Preprocessor(info, t, ())
    got = run_plan(pp, case.frame, case.order).astype(np.float64)
    want = reference_prepare(case.frame, case.order, t, info)
    levels = 2.0 if case.through_gray else 1.0
    tol = np.broadcast_to(by_channel(reference_tolerance(t, info, grey_levels=levels), info), want.shape)
    if info.dtype == np.float16:
        tol = tol + 2 * float16_ulp(want)
    diff = np.abs(got - want)
    assert np.all(diff <= tol), float((diff - tol).max())


@settings(PROPERTY, max_examples=80)
@given(
    data=st.data(),
    fh=st.integers(6, 120),
    fw=st.integers(6, 120),
    h=st.integers(16, 64),
    w=st.integers(16, 64),
    resize=st.sampled_from(["letterbox", "letterbox", "center_crop", "stretch"]),
    interpolation=st.sampled_from(list(INTERP)),
)
def test_a_box_comes_back_to_source_coordinates(
    data: st.DataObject, fh: int, fw: int, h: int, w: int, resize: str, interpolation: str
) -> None:
    """Draw a filled box on a black frame, find it in the model's input, map it back with
    Geometry.to_source: its edges land within one pixel, counted in the larger of a source
    pixel and a model pixel (a model pixel spans 1/scale source pixels when shrinking)."""
    pad = data.draw(st.integers(0, 100), label="pad")
    info = info_of((1, h, w, 3), np.uint8, 1.0, 0)
    plan = ImagePlan(ImageTransform(resize, interpolation, pad_value=pad), info, (fh, fw, 3))
    assert plan.kernel == "copy"
    g = plan.geometry
    cx, cy, cw, ch = plan.crop
    # at least three model pixels wide and tall, inside what reaches the model
    min_w, min_h = min(cw, math.ceil(3 / g.scale_x)), min(ch, math.ceil(3 / g.scale_y))
    bw = data.draw(st.integers(min_w, cw), label="box width")
    bh = data.draw(st.integers(min_h, ch), label="box height")
    x0 = data.draw(st.integers(cx, cx + cw - bw), label="box x")
    y0 = data.draw(st.integers(cy, cy + ch - bh), label="box y")
    frame = np.zeros((fh, fw, 3), np.uint8)
    frame[y0 : y0 + bh, x0 : x0 + bw] = 255
    tensor = np.zeros(info.shape, np.uint8)
    plan.run(frame, "bgr", tensor)
    inside = tensor[0, :, :, 0] > 127
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    assert rows.size and cols.size
    # pixel edges in model space → source space
    left, top = g.to_source(float(cols[0]), float(rows[0]))
    right, bottom = g.to_source(float(cols[-1] + 1), float(rows[-1] + 1))
    tol_x, tol_y = max(1.0, 1 / g.scale_x), max(1.0, 1 / g.scale_y)
    assert abs(left - x0) <= tol_x and abs(right - (x0 + bw)) <= tol_x, (left, right, x0, x0 + bw, tol_x)
    assert abs(top - y0) <= tol_y and abs(bottom - (y0 + bh)) <= tol_y, (top, bottom, y0, y0 + bh, tol_y)
    # and nothing but the box (and the pad) is lit
    assert not inside[: int(g.offset_y)].any() and not inside[:, : int(g.offset_x)].any()


# ---------------------------------------------------------------------------------------
# plans: kernels, frame kinds, caching


def test_plan_reads_rgb_frames_too() -> None:
    t = ImageTransform(color="rgb", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pp = Preprocessor(info_of((1, 8, 8, 3)), t, ())
    bgr = textured(16, 16, seed=4)
    from_bgr = run_plan(pp, bgr, "bgr")
    from_rgb = run_plan(pp, np.ascontiguousarray(bgr[:, :, ::-1]), "rgb")
    # equal up to float32 rounding: the measured kernel may be the affine one, whose channel
    # swap lives in the matrix, so the two orders sum their terms in different positions
    np.testing.assert_allclose(from_bgr, from_rgb, rtol=0, atol=1e-6)


def test_per_channel_mean_std_land_on_their_channels() -> None:
    # a flat frame: every pixel B=10, G=20, R=30 → each channel has its own exact value
    t = ImageTransform(color="rgb", scale=1.0, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    bgr = np.empty((5, 5, 3), np.uint8)
    bgr[:] = (10, 20, 30)
    for kernel in ("lut", "affine"):
        nhwc = run_plan(Preprocessor(info_of((1, 4, 4, 3)), t, (), kernel=kernel), bgr)
        np.testing.assert_array_equal(nhwc[0, 0, 0], np.float32([(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 8]))
    nchw = run_plan(Preprocessor(info_of((1, 3, 4, 4)), t, ()), bgr)
    np.testing.assert_array_equal(nchw[0, :, 0, 0], nhwc[0, 0, 0])
    np.testing.assert_array_equal(nchw[0].transpose(1, 2, 0), nhwc[0])


def test_unbatched_hwc_input() -> None:
    t = ImageTransform(scale=1 / 255)
    bgr = textured(9, 9)
    pp = Preprocessor(info_of((6, 6, 3)), t, (), kernel="lut")
    got = run_plan(pp, bgr)
    assert isinstance(pp.plan, ImagePlan)
    np.testing.assert_array_equal(got, reference_from_resized(pp.plan.resize(bgr), "bgr", t, pp.info))


def test_a_frame_at_the_model_size_is_used_as_it_is() -> None:
    t = ImageTransform(resize="letterbox", scale=1 / 255)
    plan = ImagePlan(t, info_of((1, 6, 8, 3)), (6, 8, 3))
    assert plan.direct and plan.geometry == Geometry(1.0, 1.0, 0.0, 0.0)
    frame = textured(6, 8)
    assert plan.resize(frame) is frame
    assert "used as it is (already the model's size)" in plan.describe()[0]
    assert not ImagePlan(t, info_of((1, 6, 8, 3)), (6, 9, 3)).direct


@pytest.mark.parametrize("trailing_axis", [False, True], ids=["HxW", "HxWx1"])
@pytest.mark.parametrize("model_color", ["gray", "rgb"])
def test_gray_frames(model_color: str, trailing_axis: bool) -> None:
    channels = 1 if model_color == "gray" else 3
    t = ImageTransform(color=model_color, scale=1 / 255, mean=(0.5,), std=(0.25,))
    info = info_of((1, 8, 8, channels))
    gray = textured(12, 10, seed=2, channels=1)
    if trailing_axis:  # was: a plan built for an H×W×1 frame refused that very frame
        gray = gray[:, :, None]
    pp = Preprocessor(info, t, ())
    got = run_plan(pp, gray, "gray")
    assert isinstance(pp.plan, ImagePlan) and pp.plan.frame_channels == 1
    want = reference_from_resized(pp.plan.resize(gray), "gray", t, info)
    np.testing.assert_array_equal(got, want)
    if channels == 3:  # the gray value lands on all three channels
        np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_plan_refuses_a_frame_of_another_kind() -> None:
    plan = ImagePlan(ImageTransform(), info_of((1, 4, 4, 3)), (10, 12, 3))
    with pytest.raises(PreprocessError, match="frame is 12×10 gray, the plan was built for 12×10 3-channel"):
        plan.run(np.zeros((10, 12), np.uint8), "gray", np.zeros((1, 4, 4, 3), np.float32))


def test_plan_refuses_a_frame_of_another_size() -> None:
    plan = ImagePlan(ImageTransform(), info_of((1, 4, 4, 3)), (10, 10, 3))
    with pytest.raises(PreprocessError, match="frame is 12×10, the plan was built for 10×10"):
        plan.run(np.zeros((10, 12, 3), np.uint8), "bgr", np.zeros((1, 4, 4, 3), np.float32))


def test_plans_are_cached_per_frame_shape() -> None:
    t = ImageTransform(scale=1 / 255)
    pp = Preprocessor(info_of((1, 8, 8, 3)), t, ())
    small, big = textured(10, 12, 1), textured(30, 40, 2)
    run_plan(pp, small)
    first = pp.plan
    got = run_plan(pp, big)
    assert pp.plan is not first and isinstance(pp.plan, ImagePlan) and pp.plan.frame_shape == (30, 40)
    assert np.abs(got - reference_prepare(big, "bgr", t, pp.info)).max() <= 1 / 255 + 1e-5
    run_plan(pp, small)
    assert pp.plan is first  # back to the first size: the cached plan, not a new one
    for i in range(Preprocessor.MAX_PLANS):
        run_plan(pp, textured(11 + i, 9))
    run_plan(pp, small)
    assert pp.plan is not first  # evicted by the newer shapes


def test_the_kernel_is_measured_once_and_remeasured_where_it_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    # was: a measured "affine" carried over to a later plan for gray frames, which affine
    # cannot read → PreprocessError on the first gray frame
    calls: list[float] = []

    def fake_time(fn: Any, runs: int = 7) -> float:
        fn()
        calls.append(50.0 if len(calls) % 2 == 0 else 10.0)  # lut is timed first, then affine
        return calls[-1]

    monkeypatch.setattr(preprocess, "_time_us", fake_time)
    # (x / 128 − 1): a transform the affine pass computes bit for bit as the table, so timing may choose
    t = ImageTransform(color="rgb", scale=1 / 128, mean=(1.0,), std=(1.0,))
    pp = Preprocessor(info_of((1, 8, 8, 3)), t, ())

    def plan_of(pixels: np.ndarray, order: str = "bgr") -> tuple[ImagePlan, np.ndarray]:
        tensor = run_plan(pp, pixels, order)
        assert isinstance(pp.plan, ImagePlan)
        return pp.plan, tensor

    plan, _ = plan_of(textured(12, 12))
    assert plan.kernel == "affine" and len(calls) == 2
    assert "fused pass: affine (lut 50 µs, affine 10 µs measured)" in plan.describe()
    plan, _ = plan_of(textured(20, 16))  # another color size: the choice is reused, not measured again
    assert plan.kernel == "affine" and len(calls) == 2
    gray = textured(12, 12, channels=1)
    plan, got = plan_of(gray, "gray")  # affine cannot read gray frames: the table serves them
    assert plan.kernel == "lut"
    np.testing.assert_array_equal(got, reference_from_resized(plan.resize(gray), "gray", t, pp.info))


def fake_timings(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Timings that differ from run to run, as on a loaded machine: a choice left to them would too."""
    rng = np.random.default_rng(seed)

    def fake_time(fn: Any, runs: int = 7) -> float:
        fn()
        return float(rng.uniform(1.0, 100.0))

    monkeypatch.setattr(preprocess, "_time_us", fake_time)


@settings(PROPERTY, max_examples=150)
@given(case=cases(), seed=st.integers(0, 2**16))
def test_the_prepared_tensor_does_not_depend_on_timing(case: Case, seed: int) -> None:
    """Bit-identical tensors across plan rebuilds (whatever the timings say) and across every
    kernel the plan may pick: one frame gives one result in every run."""
    t, info = case.transform, case.info
    with pytest.MonkeyPatch.context() as mp:
        fake_timings(mp, seed)
        plans = [ImagePlan(t, info, case.frame.shape) for _ in range(4)]
    first = plans[0]
    tensors = []
    for plan in plans:
        tensor = np.zeros(info.shape, dtype=info.dtype)
        plan.run(case.frame, case.order, tensor)
        tensors.append(tensor.tobytes())
    for kernel in first.exact_kernels():
        tensor = np.zeros(info.shape, dtype=info.dtype)
        ImagePlan(t, info, case.frame.shape, kernel=kernel).run(case.frame, case.order, tensor)
        tensors.append(tensor.tobytes())
    assert all(b == tensors[0] for b in tensors)


def test_a_faster_kernel_that_rounds_differently_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    # x/255 normalized by ImageNet's mean and std: the affine pass rounds differently from the
    # table on some values; timed 10× faster, it is still not taken
    t = ImageTransform(color="rgb", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    info = info_of((1, 32, 32, 3))
    plan = ImagePlan(t, info, (48, 64, 3), kernel="lut")
    affine = ImagePlan(t, info, (48, 64, 3), kernel="affine")
    frame = textured(48, 64, 3)
    a, b = np.zeros(info.shape, np.float32), np.zeros(info.shape, np.float32)
    plan.run(frame, "bgr", a)
    affine.run(frame, "bgr", b)
    assert a.tobytes() != b.tobytes()  # the two really differ here, by float32 rounding
    np.testing.assert_allclose(a, b, atol=1e-5)

    def fake_time(fn: Any, runs: int = 7) -> float:
        return 1.0 if "affine" in repr(fn) else 10.0

    monkeypatch.setattr(preprocess, "_time_us", fake_time)
    auto = ImagePlan(t, info, (48, 64, 3))
    assert auto.exact_kernels() == ["lut"] and auto.kernel == "lut"


def test_a_forced_kernel_is_used_or_refused() -> None:
    t = ImageTransform(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for kernel in ("lut", "affine"):
        plan = ImagePlan(t, info_of((1, 4, 4, 3)), (9, 9, 3), kernel=kernel)
        assert plan.kernel == kernel and f"fused pass: {kernel}" in plan.describe()
    with pytest.raises(PreprocessError, match="kernel 'affine' cannot write a uint8"):
        ImagePlan(t, info_of((1, 4, 4, 3), np.uint8, 0.02, 128), (9, 9, 3), kernel="affine")
    with pytest.raises(PreprocessError, match="kernel 'lut' cannot write"):
        ImagePlan(t, info_of((1, 3, 4, 4)), (9, 9, 3), kernel="lut")
    with pytest.raises(PreprocessError, match="kernel 'copy' cannot write"):
        Preprocessor(info_of((1, 4, 4, 3)), t, (), kernel="copy").plan_for(frame_of(textured(9, 9)))


# ---------------------------------------------------------------------------------------
# tables and identity


@pytest.mark.parametrize(
    ("dtype", "scale", "zp", "transform", "identity"),
    [
        (np.uint8, 1.0, 0, ImageTransform(), True),
        (np.uint8, 0.0, 0, ImageTransform(), True),  # unquantized uint8: values as they are
        (np.uint8, 1.0, 0, ImageTransform(scale=1 / 255), False),
        (np.uint8, 1.0, 1, ImageTransform(), False),
        (np.uint8, 2.0, 0, ImageTransform(), False),
        (np.uint8, 1.0, 0, ImageTransform(mean=(1.0,)), False),
        (np.int8, 1.0, 0, ImageTransform(), False),  # 128..255 do not fit
        (np.float32, 0.0, 0, ImageTransform(), False),  # a float tensor is never a copy
    ],
)
def test_identity_is_a_copy(dtype: Any, scale: float, zp: int, transform: ImageTransform, identity: bool) -> None:
    info = info_of((1, 6, 6, 3), dtype, scale, zp)
    plan = ImagePlan(transform, info, (6, 6, 3))
    assert (plan.kernel == "copy") is identity
    if info.is_integer:
        assert (plan.identity_steps == 0) is identity
    assert ("table is the identity: a plain copy" in plan.describe()) is identity
    # and whichever pass runs, the result is the reference's
    bgr = textured(6, 6, 9)
    tensor = np.zeros(info.shape, info.dtype)
    plan.run(bgr, "bgr", tensor)
    np.testing.assert_array_equal(tensor, reference_prepare(bgr, "bgr", transform, info))
    if identity:
        np.testing.assert_array_equal(tensor[0], bgr[:, :, ::-1])


@pytest.mark.parametrize("channels", [1, 3])
def test_coral_table_differs_from_identity_on_127_values(channels: int) -> None:
    # MobileNet-style (x - 127.5) / 127.5 into a uint8 tensor with scale 1/128, zero point 128:
    # nearly a copy, but not one, so the table pass cannot be skipped
    t = ImageTransform(color="gray" if channels == 1 else "rgb", scale=1.0, mean=(127.5,), std=(127.5,))
    info = info_of((1, 8, 8, channels), np.uint8, 1 / 128, 128)
    tables = build_tables(t, info, channels)
    assert tables.shape == (256, channels) and tables.dtype == np.uint8
    assert table_identity_steps(tables) == 127 * channels
    # independently: which values move, and by how much
    x = np.arange(256, dtype=np.float64)
    q = np.clip(round_half_away((x - 127.5) / 127.5 * 128 + 128), 0, 255)
    assert np.count_nonzero(q != x) == 127
    np.testing.assert_array_equal(tables[:, 0], q)
    assert set(np.unique(tables[:, 0].astype(int) - np.arange(256))) <= {-1, 0, 1}
    plan = ImagePlan(t, info, (8, 8) if channels == 1 else (8, 8, 3))
    assert plan.identity_steps == 127 * channels and plan.kernel == "lut"
    assert any(re.search(r"\b127 of 256\b", line) for line in plan.describe()), plan.describe()


def test_coral_mobilenet_metadata_is_127_of_256_from_identity(coral: Any) -> None:
    m = load_model(ModelConfig(path=str(coral / "mobilenet_v2_1.0_224_quant.tflite"), interpreter=INTERPRETER))
    info = m.inputs[0]
    assert (info.dtype, info.scale, info.zero_point) == (np.uint8, 1 / 128, 128)
    meta = transform_from_metadata(m.file.info)
    assert meta is not None and meta.mean == (127.5,) and meta.std == (127.5,)
    plan = ImagePlan(meta, info, (224, 224, 3))
    assert plan.direct and plan.kernel == "lut" and plan.identity_steps == 127 * 3


def test_table_identity_steps_counts_entries() -> None:
    ident = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    assert table_identity_steps(ident) == 0
    ident[5, 1] = 6
    ident[200, 2] = 0
    assert table_identity_steps(ident) == 2


def test_quantization_rounds_half_away_from_zero_and_clips() -> None:
    # pixel p with scale 1, mean 0, std 1 and tensor scale 2 → p / 2 + zp: every odd pixel is a tie
    t = ImageTransform(scale=1.0)
    u = build_tables(t, info_of((1, 2, 2, 1), np.uint8, 2.0, 0), 1)[:, 0].astype(int)
    assert u[1] == 1 and u[3] == 2 and u[5] == 3 and u[255] == 128  # 0.5 → 1, 1.5 → 2, 2.5 → 3
    i8 = build_tables(ImageTransform(scale=1.0, mean=(255.0,)), info_of((1, 2, 2, 1), np.int8, 2.0, 0), 1)[:, 0]
    assert i8.dtype == np.int8
    assert int(i8[255 - 1]) == -1  # -0.5 → -1
    assert int(i8[255 - 3]) == -2  # -1.5 → -2
    assert int(i8[0]) == -128  # -127.5 → -128, and anything lower clips there
    clipped = build_tables(ImageTransform(scale=1.0), info_of((1, 2, 2, 1), np.int8, 0.5, 0), 1)[:, 0]
    assert int(clipped[0]) == 0 and int(clipped[63]) == 126 and int(clipped[64]) == 127 and int(clipped[255]) == 127


# ---------------------------------------------------------------------------------------
# geometry


def test_letterbox_geometry_640x480_into_300x300() -> None:
    t = ImageTransform(resize="letterbox", pad_value=114)
    plan = ImagePlan(t, info_of((1, 300, 300, 3), np.uint8, 1.0, 0), (480, 640, 3))
    g = plan.geometry
    # 640×480 scaled by 300/640 = 0.46875 → 300×225, centered: 37 rows of padding above
    assert g.scale_x == pytest.approx(0.46875) and g.scale_y == pytest.approx(0.46875)
    assert (g.offset_x, g.offset_y) == (0.0, 37.0)
    assert g.to_source(0, 37) == pytest.approx((0.0, 0.0))
    assert g.to_source(300, 262) == pytest.approx((640.0, 480.0))
    assert g.to_source(150, 37 + 112.5) == pytest.approx((320.0, 240.0))
    # the content: a white frame lands in rows 37..261, the pad value fills the bands
    tensor = np.zeros((1, 300, 300, 3), np.uint8)
    plan.run(np.full((480, 640, 3), 255, np.uint8), "bgr", tensor)
    assert np.all(tensor[0, :37] == 114)
    assert np.all(tensor[0, 262:] == 114)
    assert np.all(tensor[0, 37:262] == 255)
    # the pad survives a second frame (the buffer is reused)
    plan.run(np.full((480, 640, 3), 9, np.uint8), "bgr", tensor)
    assert np.all(tensor[0, :37] == 114) and np.all(tensor[0, 37:262] == 9) and np.all(tensor[0, 262:] == 114)


def test_letterbox_pad_goes_through_the_transform() -> None:
    # the pad is in pixel units: it is normalized like any pixel
    t = ImageTransform(resize="letterbox", scale=1 / 255, mean=(0.5,), std=(0.25,), pad_value=51)
    pp = Preprocessor(info_of((1, 10, 10, 3)), t, ())
    got = run_plan(pp, np.zeros((10, 20, 3), np.uint8))  # 20×10 → 10×5 with 2 rows above, 3 below
    pad = np.float32((51 / 255 - 0.5) / 0.25)
    assert np.all(got[0, :2] == pad) and np.all(got[0, 7:] == pad)
    assert np.all(got[0, 2:7] == np.float32(-2.0))


def test_letterbox_tall_frame_pads_the_sides() -> None:
    plan = ImagePlan(ImageTransform(resize="letterbox"), info_of((1, 300, 300, 3)), (640, 480, 3))
    g = plan.geometry
    assert (g.offset_x, g.offset_y) == (37.0, 0.0)
    assert g.to_source(37, 0) == pytest.approx((0.0, 0.0))
    assert g.to_source(262, 300) == pytest.approx((480.0, 640.0))


def test_center_crop_geometry() -> None:
    t = ImageTransform(resize="center_crop", interpolation="linear")
    plan = ImagePlan(t, info_of((1, 300, 300, 3), np.uint8, 1.0, 0), (480, 640, 3))
    assert plan.crop == (80, 0, 480, 480)
    g = plan.geometry
    assert g.scale_x == pytest.approx(0.625) and g.scale_y == pytest.approx(0.625)
    assert g.to_source(0, 0) == pytest.approx((80.0, 0.0))
    assert g.to_source(300, 300) == pytest.approx((560.0, 480.0))
    # the cropped sides do not reach the tensor
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 80:560] = 200
    tensor = np.zeros((1, 300, 300, 3), np.uint8)
    plan.run(frame, "bgr", tensor)
    assert np.all(tensor == 200)


def test_center_crop_tall_and_non_square() -> None:
    tall = ImagePlan(ImageTransform(resize="center_crop"), info_of((1, 300, 300, 3)), (640, 480, 3))
    assert tall.crop == (0, 80, 480, 480)
    assert tall.geometry.to_source(0, 0) == pytest.approx((0.0, 80.0))
    wide_model = ImagePlan(ImageTransform(resize="center_crop"), info_of((1, 240, 320, 3)), (640, 640, 3))
    assert wide_model.crop == (0, 80, 640, 480)
    assert wide_model.geometry.to_source(320, 240) == pytest.approx((640.0, 560.0))


def test_center_crop_of_a_sliver_keeps_at_least_one_pixel() -> None:
    # was: a crop of 0 rows and a ZeroDivisionError for a frame much narrower than the model
    info = info_of((1, 100, 300, 3), np.uint8, 1.0, 0)
    plan = ImagePlan(ImageTransform(resize="center_crop"), info, (100, 1, 3))
    assert plan.crop == (0, 49, 1, 1)
    frame = np.zeros((100, 1, 3), np.uint8)
    frame[49] = (1, 2, 3)
    tensor = np.zeros(info.shape, np.uint8)
    plan.run(frame, "bgr", tensor)
    assert np.all(tensor[0] == np.uint8([3, 2, 1]))


def test_stretch_geometry() -> None:
    plan = ImagePlan(ImageTransform(), info_of((1, 224, 224, 3)), (480, 640, 3))
    assert plan.geometry == Geometry(224 / 640, 224 / 480, 0.0, 0.0)
    assert plan.geometry.to_source(224, 224) == pytest.approx((640.0, 480.0))


# ---------------------------------------------------------------------------------------
# inputs that do not fit


def test_three_channel_mean_for_a_gray_model() -> None:
    t = ImageTransform(color="gray", mean=(0.1, 0.2, 0.3))
    with pytest.raises(PreprocessError, match=r"preprocess\.mean: 3 values given but the model input has 1 channel"):
        ImagePlan(t, info_of((1, 8, 8, 1)), (8, 8))


def test_two_value_std_for_a_color_model() -> None:
    with pytest.raises(PreprocessError, match=r"preprocess\.std: 2 values given but the model input has 3 channel"):
        ImagePlan(ImageTransform(std=(1.0, 2.0)), info_of((1, 8, 8, 3)), (8, 8, 3))


def test_gray_color_for_a_three_channel_model() -> None:
    with pytest.raises(PreprocessError, match=r"preprocess\.color = 'gray' but the model input has 3 channel"):
        ImagePlan(ImageTransform(color="gray"), info_of((1, 8, 8, 3)), (8, 8))


@pytest.mark.parametrize("shape", [(1, 8, 8, 1), (1, 1, 8, 8)])
def test_rgb_color_for_a_gray_model(shape: tuple[int, ...]) -> None:
    with pytest.raises(PreprocessError, match=r"preprocess\.color = 'rgb' but the model input has 1 channel"):
        ImagePlan(ImageTransform(color="rgb"), info_of(shape), (8, 8))


@pytest.mark.parametrize("shape", [(1, 8, 8, 5), (1, 8, 8), (2, 8, 8, 3), (1, 4, 8, 8, 3), (8, 8, 4)])
def test_non_image_input_shape(shape: tuple[int, ...]) -> None:
    pp = Preprocessor(info_of(shape), ImageTransform(), ())
    with pytest.raises(PreprocessError, match="not an image input") as exc:
        pp.run(frame_of(np.zeros((8, 8, 3), np.uint8)), lambda: np.zeros(shape, np.float32))
    assert str(list(shape)) in str(exc.value)
    assert "'input'" in str(exc.value)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((1, 32, 32, 3), InputLayout(32, 32, 3, nchw=False)),
        ((1, 3, 32, 48), InputLayout(32, 48, 3, nchw=True)),
        ((1, 1, 28, 28), InputLayout(28, 28, 1, nchw=True)),
        ((1, 28, 20, 1), InputLayout(28, 20, 1, nchw=False)),
        ((28, 20, 3), InputLayout(28, 20, 3, nchw=False)),
    ],
)
def test_input_layout(shape: tuple[int, ...], layout: InputLayout) -> None:
    assert InputLayout.of(info_of(shape)) == layout


def test_frame_kind_must_match_the_model() -> None:
    image = Preprocessor(info_of((1, 8, 8, 3)), ImageTransform(), ())
    row = Frame(seq=1, ts=0.0, mono=0.0, source="r", values=np.zeros(4))
    with pytest.raises(PreprocessError, match="takes images, but the source delivers sensor rows"):
        image.run(row, lambda: np.zeros((1, 8, 8, 3), np.float32))
    vector = Preprocessor(info_of((1, 4)), None, ())
    with pytest.raises(PreprocessError, match="takes a vector of sensor values, but the source delivers images"):
        vector.run(frame_of(np.zeros((8, 8, 3), np.uint8)), lambda: np.zeros((1, 4), np.float32))


# ---------------------------------------------------------------------------------------
# vectors

FEATURES = (
    FeatureConfig(name="age", mean=40.0, std=10.0, impute="mean"),
    FeatureConfig(name="bmi", mean=25.0, std=5.0, impute="zero"),
    FeatureConfig(name="bp", mean=90.0, std=20.0, impute="skip"),
    FeatureConfig(name="s5", mean=4.0, std=2.0, impute=6.0),
)


def _row(values: list[float]) -> Frame:
    return Frame(seq=1, ts=0.0, mono=0.0, source="rows.csv:2", values=np.array(values, dtype=np.float64))


def test_vector_standardization() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    tensor = np.zeros((1, 4), np.float32)
    assert pp.run(_row([50.0, 20.0, 100.0, 3.0]), lambda: tensor).prepared == Prepared()
    np.testing.assert_array_equal(tensor[0], np.float32([1.0, -1.0, 0.5, -0.5]))


def test_vector_imputation_mean_zero_number() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    tensor = np.zeros((1, 4), np.float32)
    prepared = pp.run(_row([math.nan, math.nan, 70.0, math.nan]), lambda: tensor)
    assert prepared is not None and prepared.prepared == Prepared(imputed=("age", "bmi", "s5"))
    # age → its mean → 0; bmi → a raw 0 → (0 - 25) / 5; s5 → a raw 6 → (6 - 4) / 2
    np.testing.assert_array_equal(tensor[0], np.float32([0.0, -5.0, -1.0, 1.0]))


def test_vector_skip_leaves_the_tensor_alone() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    tensor = np.full((1, 4), 7.0, np.float32)
    assert pp.run(_row([50.0, 20.0, math.nan, 3.0]), lambda: tensor) is None
    np.testing.assert_array_equal(tensor, np.full((1, 4), 7.0, np.float32))


def test_skip_missing_skips_any_row_with_a_gap() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES, skip_missing=True)
    tensor = np.full((1, 4), 7.0, np.float32)
    for gap in range(4):  # whatever the feature's own impute says
        row = [50.0, 20.0, 100.0, 3.0]
        row[gap] = math.nan
        assert pp.run(_row(row), lambda: tensor) is None
    np.testing.assert_array_equal(tensor, np.full((1, 4), 7.0, np.float32))
    assert pp.run(_row([50.0, 20.0, 100.0, 3.0]), lambda: tensor).prepared == Prepared()
    assert isinstance(pp.plan, preprocess.VectorPlan)
    assert "missing → skip the row" in "\n".join(pp.plan.describe())


def test_vector_clipping_to_the_declared_range() -> None:
    features = (
        FeatureConfig(name="temp", mean=20.0, std=5.0, min=-10.0, max=50.0),
        FeatureConfig(name="rh", mean=50.0, std=10.0, min=0.0, max=100.0, impute=150.0),
        FeatureConfig(name="free", mean=0.0, std=1.0),
    )
    pp = Preprocessor(info_of((1, 3)), None, features)
    tensor = np.zeros((1, 3), np.float32)
    assert pp.run(_row([85.0, -3.0, 1e6]), lambda: tensor).prepared == Prepared(clipped=("temp", "rh"))
    np.testing.assert_array_equal(tensor[0], np.float32([(50 - 20) / 5, (0 - 50) / 10, 1e6]))
    # on the bounds is inside; an imputed value is held in the range too, and counted twice
    assert pp.run(_row([-10.0, math.nan, -1e6]), lambda: tensor).prepared == Prepared(imputed=("rh",), clipped=("rh",))
    np.testing.assert_array_equal(tensor[0], np.float32([-6.0, 5.0, -1e6]))
    assert isinstance(pp.plan, preprocess.VectorPlan)
    assert "held in [-10.0, 50.0]" in "\n".join(pp.plan.describe())


def test_vector_does_not_modify_the_frame() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    frame = _row([math.nan, 20.0, 100.0, 3.0])
    pp.run(frame, lambda: np.zeros((1, 4), np.float32))
    assert frame.values is not None and math.isnan(frame.values[0]) and frame.values[1] == 20.0


def test_vector_without_features_passes_values_and_skips_missing() -> None:
    pp = Preprocessor(info_of((1, 3)), None, ())
    tensor = np.zeros((1, 3), np.float32)
    assert pp.run(_row([1.5, -2.0, 300.0]), lambda: tensor).prepared == Prepared()
    np.testing.assert_array_equal(tensor[0], np.float32([1.5, -2.0, 300.0]))
    assert pp.run(_row([1.5, math.nan, 300.0]), lambda: tensor) is None


def test_vector_quantized_int8() -> None:
    info = info_of((1, 4), np.int8, 0.05, -3)
    pp = Preprocessor(info, None, FEATURES)
    tensor = np.zeros((1, 4), np.int8)
    pp.run(_row([50.0, 20.0, 100.0, 30.0]), lambda: tensor)
    # z = [1, -1, 0.5, 13] → z / 0.05 - 3 = [17, -23, 7, 257 → 127]
    np.testing.assert_array_equal(tensor[0], np.int8([17, -23, 7, 127]))


def test_vector_wrong_number_of_features() -> None:
    with pytest.raises(PreprocessError, match="lists 3 features but the model input 'input' takes 4 values"):
        Preprocessor(info_of((1, 4)), None, FEATURES[:3])


def test_vector_wrong_row_length() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    with pytest.raises(PreprocessError, match="row has 3 values, the model takes 4"):
        pp.run(_row([1.0, 2.0, 3.0]), lambda: np.zeros((1, 4), np.float32))


@settings(PROPERTY, max_examples=80)
@given(
    spec=st.lists(
        st.tuples(
            st.floats(-1e3, 1e3),
            st.floats(0.01, 1e3),
            st.sampled_from(["mean", "zero", "skip", -3.5, 12.0]),
            st.one_of(st.none(), st.floats(-2e3, 2e3)),  # a bound, around the mean
            st.floats(1.0, 1e3),  # the range's width, when bounded
            st.one_of(st.floats(-1e4, 1e4), st.just(math.nan)),
        ),
        min_size=1,
        max_size=6,
    ),
    skip_missing=st.booleans(),
    target=st.sampled_from(["float32", "int8", "uint8"]),
)
def test_vector_matches_hand_computation(
    spec: list[tuple[float, float, Any, float | None, float, float]], skip_missing: bool, target: str
) -> None:
    features = tuple(
        FeatureConfig(name=f"f{i}", mean=m, std=s, impute=imp, min=lo, max=None if lo is None else lo + width)
        for i, (m, s, imp, lo, width, _) in enumerate(spec)
    )
    info = info_of((1, len(spec)), np.dtype(target), *((0.0, 0) if target == "float32" else (0.07, 5)))
    pp = Preprocessor(info, None, features, skip_missing=skip_missing)
    tensor = np.full((1, len(spec)), 99, info.dtype)
    prepared = pp.run(_row([x for *_, x in spec]), lambda: tensor)
    want, imputed, clipped = [], [], []
    for i, (m, s, imp, lo, width, x) in enumerate(spec):
        value = x
        if math.isnan(x):
            if imp == "skip" or skip_missing:
                assert prepared is None
                np.testing.assert_array_equal(tensor, np.full((1, len(spec)), 99, info.dtype))
                return
            value = m if imp == "mean" else 0.0 if imp == "zero" else float(imp)
            imputed.append(f"f{i}")
        if lo is not None and not lo <= value <= lo + width:
            value = min(max(value, lo), lo + width)
            clipped.append(f"f{i}")
        want.append((value - m) / s)
    assert prepared is not None and prepared.prepared == Prepared(tuple(imputed), tuple(clipped))
    z = np.array(want, dtype=np.float64)
    if target == "float32":
        np.testing.assert_array_equal(tensor[0], z.astype(np.float32))
    else:
        lim = np.iinfo(info.dtype)
        np.testing.assert_array_equal(tensor[0], np.clip(round_half_away(z / 0.07) + 5, lim.min, lim.max))


# ---------------------------------------------------------------------------------------
# the bundled models


@cache
def manifest() -> dict[str, Any]:
    return json.loads((BUNDLED / "manifest.json").read_text())  # type: ignore[no-any-return]


def manifest_transform(name: str) -> ImageTransform:
    tr = manifest()["models"][name]["transform"]
    assert tr["kind"] == "image"
    cfg = PreprocessConfig(
        resize=tr["resize"],
        interpolation=tr["interpolation"],
        color=tr["color"],
        scale=tr["scale"],
        mean=tuple(tr["mean"]),
        std=tuple(tr["std"]),
    )
    return transform_from_config(cfg)


@cache
def model(name: str) -> LoadedModel:
    return load_model(ModelConfig(path=str(BUNDLED / f"{name}.tflite"), interpreter=INTERPRETER))


@cache
def digit_frames() -> tuple[tuple[np.ndarray, int], ...]:
    files = sorted((BUNDLED / "digits_frames").glob("*.png"))
    assert len(files) == manifest()["heldout"]["digits_frames"]["count"]
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        assert img is not None, f
        out.append((img, int(f.stem.split("_")[1])))
    return tuple(out)


def accuracy(name: str, transform: ImageTransform) -> float:
    m = model(name)
    pp = Preprocessor(m.inputs[0], transform, ())
    view = m.input_view(0)
    right = 0
    for i, (img, label) in enumerate(digit_frames()):
        pp.run(frame_of(img, seq=i), view)
        m.invoke()
        out = m.output(0)
        assert np.isfinite(out).all()
        right += int(np.argmax(out)) == label
    return right / len(digit_frames())


def test_manifest_transform_is_the_one_described() -> None:
    t = manifest_transform("digits_float")
    assert t.scale == pytest.approx(1 / 255) and t.mean == IMAGENET_MEAN and t.std == IMAGENET_STD and t.color == "rgb"


@pytest.mark.parametrize("name", ["digits_float", "digits_uint8"])
def test_bundled_digits_accuracy_with_the_training_transform(name: str) -> None:
    acc = accuracy(name, manifest_transform(name))
    assert acc >= 0.95, acc


def test_wrong_transform_hurts_the_float_model() -> None:
    right = accuracy("digits_float", manifest_transform("digits_float"))
    raw = accuracy("digits_float", ImageTransform(color="rgb", scale=1.0, mean=(0.0,), std=(1.0,)))
    assert raw <= right - 0.2, (raw, right)
    assert raw < 0.8


def test_uint8_model_input_is_the_reference_quantization() -> None:
    m = model("digits_uint8")
    info = m.inputs[0]
    assert info.dtype == np.uint8 and info.quantized
    t = manifest_transform("digits_uint8")
    img, _ = digit_frames()[0]
    Preprocessor(info, t, ()).run(frame_of(img), m.input_view(0))
    got = m.interpreter.get_tensor(info.index).astype(np.float64)
    # the frames are at the model's size: no resize, so exactly the reference's quantization
    assert img.shape[:2] == (32, 32)
    np.testing.assert_array_equal(got, reference_prepare(img, "bgr", t, info))
    # and a frame that needs resizing: within a grey level's worth of steps
    big = cv2.resize(img, (45, 37), interpolation=cv2.INTER_CUBIC)
    Preprocessor(info, t, ()).run(frame_of(big), m.input_view(0))
    got = m.interpreter.get_tensor(info.index).astype(np.float64)
    tol = reference_tolerance(t, info)
    assert np.all(np.abs(got - reference_prepare(big, "bgr", t, info)) <= tol)


def test_metadata_transform_reproduces_the_configured_one() -> None:
    m = model("digits_uint8")
    meta = transform_from_metadata(m.file.info)
    assert meta is not None
    assert meta.origin == "model metadata" and meta.color == "rgb" and meta.scale == 1.0
    assert meta.mean == pytest.approx([255 * v for v in IMAGENET_MEAN], rel=1e-6)
    assert meta.std == pytest.approx([255 * v for v in IMAGENET_STD], rel=1e-6)
    assert compare_transforms(manifest_transform("digits_uint8"), meta, 3) is None
    # and the metadata's transform serves the model as well as the config's
    assert accuracy("digits_uint8", meta) >= 0.95


@pytest.mark.parametrize(
    "wrong",
    [
        ImageTransform(scale=1 / 255),  # forgot mean/std
        ImageTransform(scale=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),  # forgot 1/255
        ImageTransform(scale=1 / 255, mean=IMAGENET_MEAN[::-1], std=IMAGENET_STD[::-1]),  # BGR order stats
    ],
)
def test_compare_transforms_warns_on_disagreement(wrong: ImageTransform) -> None:
    meta = transform_from_metadata(model("digits_uint8").file.info)
    assert meta is not None
    warning = compare_transforms(wrong, meta, 3)
    assert warning is not None
    assert "metadata" in warning and "[preprocess]" in warning
    assert "\n" not in warning


def test_no_metadata_no_transform() -> None:
    assert transform_from_metadata(model("digits_float").file.info) is None
    assert transform_from_metadata(None) is None


def test_sensor_model_through_csv_source_and_vector_plan() -> None:
    spec = manifest()["models"]["sensor"]
    features = tuple(FeatureConfig(name=f["name"], mean=f["mean"], std=f["std"]) for f in spec["transform"]["features"])
    src = CsvRowSource(
        SourceConfig(kind="csv", path=str(BUNDLED / spec["file"].replace(".tflite", "_heldout.csv"))).options,  # type: ignore[arg-type]
        feature_names=tuple(f.name for f in features),
    )
    truth = CsvRowSource(
        SourceConfig(kind="csv", path=str(BUNDLED / "sensor_heldout.csv"), columns=("progression",)).options  # type: ignore[arg-type]
    )
    m = model("sensor")
    pp = Preprocessor(m.inputs[0], None, features)
    view = m.input_view(0)
    errors = []
    while (row := src.read()) is not None:
        target = truth.read()
        assert isinstance(row, Frame) and isinstance(target, Frame)
        assert pp.run(row, view).prepared == Prepared()
        m.invoke()
        errors.append(abs(float(m.output(0)[0, 0]) - float(target.values[0])))  # type: ignore[index]
    assert len(errors) == manifest()["heldout"]["sensor"]["rows"]
    assert float(np.mean(errors)) == pytest.approx(spec["measured"]["mae"], abs=0.05)
