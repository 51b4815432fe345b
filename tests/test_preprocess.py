"""Tests for edge_agent.preprocess: the compiled plan against a plain numpy reference, and
the bundled models fed through it."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, INTERPRETER
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import FeatureConfig, ModelConfig, PreprocessConfig, SourceConfig
from edge_agent.errors import PreprocessError
from edge_agent.preprocess import (
    Geometry,
    ImagePlan,
    ImageTransform,
    InputLayout,
    Preprocessor,
    build_tables,
    compare_transforms,
    table_identity_steps,
    transform_from_config,
    transform_from_metadata,
)
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.sources import Frame
from edge_agent.sources.csv_rows import CsvRowSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERP = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}

# ---------------------------------------------------------------------------------------
# the reference: the training transform written out the straightforward way


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, np.floor(x + 0.5), -np.floor(-x + 0.5))


def reference(
    bgr: np.ndarray,
    t: ImageTransform,
    *,
    height: int,
    width: int,
    channels: int,
    nchw: bool,
    dtype: Any,
    scale: float = 0.0,
    zero_point: int = 0,
) -> np.ndarray:
    """One frame (BGR uint8) → the tensor contents (batch of 1), computed per pixel."""
    fh, fw = bgr.shape[:2]
    interp = INTERP[t.interpolation]
    if t.resize == "stretch":
        img = cv2.resize(bgr, (width, height), interpolation=interp)
    elif t.resize == "center_crop":
        if fw * height > fh * width:  # wider than the model: keep the full height
            cw, ch = max(1, round(fh * width / height)), fh
        else:
            cw, ch = fw, max(1, round(fw * height / width))
        x0, y0 = (fw - cw) // 2, (fh - ch) // 2
        img = cv2.resize(bgr[y0 : y0 + ch, x0 : x0 + cw].copy(), (width, height), interpolation=interp)
    else:  # letterbox
        r = min(width / fw, height / fh)
        nw, nh = max(1, round(fw * r)), max(1, round(fh * r))
        img = np.full((height, width, 3), t.pad_value, dtype=np.uint8)
        x0, y0 = (width - nw) // 2, (height - nh) // 2
        img[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(bgr, (nw, nh), interpolation=interp)
    if t.color == "rgb":
        img = img[:, :, ::-1]
    elif t.color == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    mean = np.array(t.mean * channels if len(t.mean) == 1 else t.mean, dtype=np.float64)
    std = np.array(t.std * channels if len(t.std) == 1 else t.std, dtype=np.float64)
    prepared = (img.astype(np.float64) * t.scale - mean) / std
    if np.issubdtype(dtype, np.integer):
        lim = np.iinfo(dtype)
        # TFLite's order: round(prepared / scale), then add the zero point
        q = _round_half_away(prepared / scale) + zero_point if scale else _round_half_away(prepared)
        out = np.clip(q, lim.min, lim.max).astype(dtype)
    else:
        out = prepared.astype(dtype)
    if nchw:
        out = out.transpose(2, 0, 1)
    return out[None]


def info_of(shape: tuple[int, ...], dtype: Any = np.float32, scale: float = 0.0, zero_point: int = 0) -> TensorInfo:
    return TensorInfo(name="input", index=0, shape=shape, dtype=np.dtype(dtype), scale=scale, zero_point=zero_point)


def frame_of(pixels: np.ndarray, order: str = "bgr", seq: int = 1) -> Frame:
    return Frame(seq=seq, ts=0.0, mono=0.0, source="test", pixels=pixels, order=order)  # type: ignore[arg-type]


def run_plan(pp: Preprocessor, pixels: np.ndarray, order: str = "bgr") -> np.ndarray:
    tensor = np.full(pp.info.shape, 77, dtype=pp.info.dtype)
    assert pp.run(frame_of(pixels, order), lambda: tensor) == []
    return tensor


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR frame with distinct channels, smooth parts and sharp edges."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[: h // 3, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, : w // 4, 1] = 255
    return img


# dtype, tensor scale, zero point
TARGETS = {
    "float32": (np.float32, 0.0, 0),
    "uint8": (np.uint8, 0.01865844801068306, 114),  # digits_uint8's input
    "int8": (np.int8, 0.0171, -9),
    "uint8_unquantized": (np.uint8, 0.0, 0),
}


# ---------------------------------------------------------------------------------------
# exactness against the reference


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
def test_plan_matches_reference(target: str, nchw: bool, color: str) -> None:
    dtype, scale, zp = TARGETS[target]
    channels = 1 if color == "gray" else 3
    h, w = 12, 20
    shape = (1, channels, h, w) if nchw else (1, h, w, channels)
    if target == "uint8_unquantized":
        t = ImageTransform(color=color, scale=1.0, mean=(10.0,), std=(2.0,))
    elif color == "gray":
        t = ImageTransform(color=color, scale=1 / 255, mean=(0.45,), std=(0.25,))
    else:
        t = ImageTransform(color=color, scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pp = Preprocessor(info_of(shape, dtype, scale, zp), t, ())
    bgr = textured(37, 53)
    got = run_plan(pp, bgr)
    want = reference(bgr, t, height=h, width=w, channels=channels, nchw=nchw, dtype=dtype, scale=scale, zero_point=zp)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    # not trivially constant: the channels really differ and the values spread
    assert len(np.unique(got)) > 20


def test_plan_reads_rgb_frames_too() -> None:
    t = ImageTransform(color="rgb", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pp = Preprocessor(info_of((1, 8, 8, 3)), t, ())
    bgr = textured(16, 16, seed=4)
    from_bgr = run_plan(pp, bgr, "bgr")
    from_rgb = run_plan(pp, np.ascontiguousarray(bgr[:, :, ::-1]), "rgb")
    np.testing.assert_array_equal(from_bgr, from_rgb)


def test_per_channel_mean_std_land_on_their_channels() -> None:
    # a flat frame: every pixel B=10, G=20, R=30 → each channel has its own exact value
    t = ImageTransform(color="rgb", scale=1.0, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    bgr = np.empty((5, 5, 3), np.uint8)
    bgr[:] = (10, 20, 30)
    nhwc = run_plan(Preprocessor(info_of((1, 4, 4, 3)), t, ()), bgr)
    np.testing.assert_array_equal(nhwc[0, 0, 0], np.float32([(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 8]))
    nchw = run_plan(Preprocessor(info_of((1, 3, 4, 4)), t, ()), bgr)
    np.testing.assert_array_equal(nchw[0, :, 0, 0], nhwc[0, 0, 0])
    np.testing.assert_array_equal(nchw[0].transpose(1, 2, 0), nhwc[0])


def test_unbatched_hwc_input() -> None:
    t = ImageTransform(scale=1 / 255)
    bgr = textured(9, 9)
    got = run_plan(Preprocessor(info_of((6, 6, 3)), t, ()), bgr)
    want = reference(bgr, t, height=6, width=6, channels=3, nchw=False, dtype=np.float32)[0]
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(
    data=st.data(),
    fh=st.integers(1, 48),
    fw=st.integers(1, 48),
    h=st.integers(1, 24),
    w=st.integers(4, 24),  # 1×C×H×W with W = 1 or 3 reads as NHWC: a genuinely ambiguous shape
    target=st.sampled_from(list(TARGETS)),
    nchw=st.booleans(),
    color=st.sampled_from(["rgb", "bgr", "gray"]),
    resize=st.sampled_from(["stretch", "letterbox", "center_crop"]),
    interpolation=st.sampled_from(list(INTERP)),
    seed=st.integers(0, 2**16),
)
def test_plan_matches_reference_everywhere(
    data: st.DataObject,
    fh: int,
    fw: int,
    h: int,
    w: int,
    target: str,
    nchw: bool,
    color: str,
    resize: str,
    interpolation: str,
    seed: int,
) -> None:
    dtype, scale, zp = TARGETS[target]
    channels = 1 if color == "gray" else 3
    n = data.draw(st.sampled_from([1, channels]), label="values per mean/std")
    mean = tuple(data.draw(st.lists(st.floats(-2, 200), min_size=n, max_size=n), label="mean"))
    std = tuple(data.draw(st.lists(st.floats(0.01, 100), min_size=n, max_size=n), label="std"))
    px_scale = data.draw(st.sampled_from([1.0, 1 / 255, 1 / 127.5, 2.0]), label="scale")
    pad = data.draw(st.integers(0, 255), label="pad")
    t = ImageTransform(resize, interpolation, color, px_scale, mean, std, pad)
    shape = (1, channels, h, w) if nchw else (1, h, w, channels)
    pp = Preprocessor(info_of(shape, dtype, scale, zp), t, ())
    bgr = textured(fh, fw, seed)
    got = run_plan(pp, bgr)
    want = reference(bgr, t, height=h, width=w, channels=channels, nchw=nchw, dtype=dtype, scale=scale, zero_point=zp)
    np.testing.assert_array_equal(got, want)


def test_plan_is_rebuilt_when_the_frame_size_changes() -> None:
    t = ImageTransform(scale=1 / 255)
    pp = Preprocessor(info_of((1, 8, 8, 3)), t, ())
    small, big = textured(10, 12, 1), textured(30, 40, 2)
    run_plan(pp, small)
    first = pp.plan
    got = run_plan(pp, big)
    assert pp.plan is not first
    np.testing.assert_array_equal(got, reference(big, t, height=8, width=8, channels=3, nchw=False, dtype=np.float32))
    run_plan(pp, big)
    assert isinstance(pp.plan, ImagePlan) and pp.plan.frame_shape == (30, 40)


def test_plan_refuses_a_frame_of_another_size() -> None:
    plan = ImagePlan(ImageTransform(), info_of((1, 4, 4, 3)), (10, 10))
    with pytest.raises(PreprocessError, match="frame is 12×10, the plan was built for 10×10"):
        plan.run(np.zeros((10, 12, 3), np.uint8), "bgr", np.zeros((1, 4, 4, 3), np.float32))


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
def test_identity_detection(dtype: Any, scale: float, zp: int, transform: ImageTransform, identity: bool) -> None:
    info = info_of((1, 6, 6, 3), dtype, scale, zp)
    plan = ImagePlan(transform, info, (6, 6))
    assert plan.identity is identity
    assert ("table is the identity: a plain copy" in plan.describe()) is (identity and plan.info.is_integer)
    # and whichever path runs, the result is the reference's
    bgr = textured(6, 6, 9)
    tensor = np.zeros(info.shape, info.dtype)
    plan.run(bgr, "bgr", tensor)
    want = reference(bgr, transform, height=6, width=6, channels=3, nchw=False, dtype=dtype, scale=scale, zero_point=zp)
    np.testing.assert_array_equal(tensor, want)


def test_identity_plan_copies_the_rgb_pixels() -> None:
    info = info_of((1, 5, 7, 3), np.uint8, 1.0, 0)
    pp = Preprocessor(info, ImageTransform(), ())
    bgr = textured(5, 7, 3)
    got = run_plan(pp, bgr)
    assert isinstance(pp.plan, ImagePlan) and pp.plan.identity
    np.testing.assert_array_equal(got[0], bgr[:, :, ::-1])


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
    q = np.clip(_round_half_away((x - 127.5) / 127.5 * 128 + 128), 0, 255)
    assert np.count_nonzero(q != x) == 127
    np.testing.assert_array_equal(tables[:, 0], q)
    assert set(np.unique(tables[:, 0].astype(int) - np.arange(256))) <= {-1, 0, 1}
    plan = ImagePlan(t, info, (8, 8))
    assert not plan.identity
    assert f"table differs from the identity on {127 * channels} of {256 * channels} entries" in plan.describe()


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
    plan = ImagePlan(t, info_of((1, 300, 300, 3), np.uint8, 1.0, 0), (480, 640))
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
    plan = ImagePlan(ImageTransform(resize="letterbox"), info_of((1, 300, 300, 3)), (640, 480))
    g = plan.geometry
    assert (g.offset_x, g.offset_y) == (37.0, 0.0)
    assert g.to_source(37, 0) == pytest.approx((0.0, 0.0))
    assert g.to_source(262, 300) == pytest.approx((480.0, 640.0))


def test_center_crop_geometry() -> None:
    t = ImageTransform(resize="center_crop", interpolation="linear")
    plan = ImagePlan(t, info_of((1, 300, 300, 3), np.uint8, 1.0, 0), (480, 640))
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
    tall = ImagePlan(ImageTransform(resize="center_crop"), info_of((1, 300, 300, 3)), (640, 480))
    assert tall.crop == (0, 80, 480, 480)
    assert tall.geometry.to_source(0, 0) == pytest.approx((0.0, 80.0))
    wide_model = ImagePlan(ImageTransform(resize="center_crop"), info_of((1, 240, 320, 3)), (640, 640))
    assert wide_model.crop == (0, 80, 640, 480)
    assert wide_model.geometry.to_source(320, 240) == pytest.approx((640.0, 560.0))


def test_center_crop_of_a_sliver_keeps_at_least_one_pixel() -> None:
    # was: a crop of 0 rows and a ZeroDivisionError for a frame much narrower than the model
    info = info_of((1, 100, 300, 3), np.uint8, 1.0, 0)
    plan = ImagePlan(ImageTransform(resize="center_crop"), info, (100, 1))
    assert plan.crop == (0, 49, 1, 1)
    frame = np.zeros((100, 1, 3), np.uint8)
    frame[49] = (1, 2, 3)
    tensor = np.zeros(info.shape, np.uint8)
    plan.run(frame, "bgr", tensor)
    assert np.all(tensor[0] == np.uint8([3, 2, 1]))


def test_stretch_geometry() -> None:
    plan = ImagePlan(ImageTransform(), info_of((1, 224, 224, 3)), (480, 640))
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
        ImagePlan(ImageTransform(std=(1.0, 2.0)), info_of((1, 8, 8, 3)), (8, 8))


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
    assert pp.run(_row([50.0, 20.0, 100.0, 3.0]), lambda: tensor) == []
    np.testing.assert_array_equal(tensor[0], np.float32([1.0, -1.0, 0.5, -0.5]))


def test_vector_imputation_mean_zero_number() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    tensor = np.zeros((1, 4), np.float32)
    filled = pp.run(_row([math.nan, math.nan, 70.0, math.nan]), lambda: tensor)
    assert filled == ["age", "bmi", "s5"]
    # age → its mean → 0; bmi → a raw 0 → (0 - 25) / 5; s5 → a raw 6 → (6 - 4) / 2
    np.testing.assert_array_equal(tensor[0], np.float32([0.0, -5.0, -1.0, 1.0]))


def test_vector_skip_leaves_the_tensor_alone() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    tensor = np.full((1, 4), 7.0, np.float32)
    assert pp.run(_row([50.0, 20.0, math.nan, 3.0]), lambda: tensor) is None
    np.testing.assert_array_equal(tensor, np.full((1, 4), 7.0, np.float32))


def test_vector_does_not_modify_the_frame() -> None:
    pp = Preprocessor(info_of((1, 4)), None, FEATURES)
    frame = _row([math.nan, 20.0, 100.0, 3.0])
    pp.run(frame, lambda: np.zeros((1, 4), np.float32))
    assert frame.values is not None and math.isnan(frame.values[0]) and frame.values[1] == 20.0


def test_vector_without_features_passes_values_and_skips_missing() -> None:
    pp = Preprocessor(info_of((1, 3)), None, ())
    tensor = np.zeros((1, 3), np.float32)
    assert pp.run(_row([1.5, -2.0, 300.0]), lambda: tensor) == []
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


@settings(max_examples=50, deadline=None, database=None, derandomize=True)
@given(
    st.lists(
        st.tuples(
            st.floats(-1e3, 1e3),
            st.floats(0.01, 1e3),
            st.sampled_from(["mean", "zero", "skip", -3.5, 12.0]),
            st.one_of(st.floats(-1e4, 1e4), st.just(math.nan)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_vector_matches_hand_computation(spec: list[tuple[float, float, Any, float]]) -> None:
    features = tuple(FeatureConfig(name=f"f{i}", mean=m, std=s, impute=imp) for i, (m, s, imp, _) in enumerate(spec))
    pp = Preprocessor(info_of((1, len(spec))), None, features)
    tensor = np.full((1, len(spec)), 99.0, np.float32)
    filled = pp.run(_row([x for *_, x in spec]), lambda: tensor)
    want, names = [], []
    for i, (m, s, imp, x) in enumerate(spec):
        value = x
        if math.isnan(x):
            if imp == "skip":
                assert filled is None
                np.testing.assert_array_equal(tensor, np.full((1, len(spec)), 99.0, np.float32))
                return
            value = m if imp == "mean" else 0.0 if imp == "zero" else float(imp)
            names.append(f"f{i}")
        want.append((value - m) / s)
    assert filled == names
    np.testing.assert_array_equal(tensor[0], np.array(want, dtype=np.float64).astype(np.float32))


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
    got = m.interpreter.get_tensor(info.index)
    want = reference(
        img,
        t,
        height=32,
        width=32,
        channels=3,
        nchw=False,
        dtype=np.uint8,
        scale=info.scale,
        zero_point=info.zero_point,
    )
    np.testing.assert_array_equal(got, want)


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
        SourceConfig(kind="csv", path=str(BUNDLED / spec["file"].replace(".tflite", "_heldout.csv"))),
        feature_names=tuple(f.name for f in features),
    )
    truth = CsvRowSource(SourceConfig(kind="csv", path=str(BUNDLED / "sensor_heldout.csv"), columns=("progression",)))
    m = model("sensor")
    pp = Preprocessor(m.inputs[0], None, features)
    view = m.input_view(0)
    errors = []
    while (row := src.read()) is not None:
        target = truth.read()
        assert isinstance(row, Frame) and isinstance(target, Frame)
        assert pp.run(row, view) == []
        m.invoke()
        errors.append(abs(float(m.output(0)[0, 0]) - float(target.values[0])))  # type: ignore[index]
    assert len(errors) == manifest()["heldout"]["sensor"]["rows"]
    assert float(np.mean(errors)) == pytest.approx(spec["measured"]["mae"], abs=0.05)
