"""The training transform written out the obvious way: a reference for tests and `edge-agent check`.

Plain float64 NumPy, one step at a time, with its own resize (no OpenCV anywhere), so that
the compiled plan in `edge_agent.preprocess` can be checked against something independent:

    frame ─ crop / letterbox geometry ─ resize ─ color conversion ─ (pixel·scale − mean) / std ─ quantize ─ layout

The resize follows OpenCV's coordinate conventions (modules/imgproc/src/resize.cpp), so its
result agrees with cv2.resize on uint8 frames within one grey level; OpenCV itself computes
uint8 resizes in fixed point (11-bit weights for linear and cubic), which is where that
grey level comes from:

  nearest  src = floor(dst · (1 / (dst_size / src_size))), at most src_size − 1 (OpenCV's
           own double arithmetic: an exact product can otherwise floor to a neighbour).
  linear   half-pixel centres: src = (dst + 0.5) · src_size / dst_size − 0.5, two taps,
           positions clamped to [0, src_size − 1].
  cubic    the same mapping, four taps with Keys' kernel, a = −0.75, replicated borders.
  area     when neither axis is enlarged: the box filter, each source pixel weighted by the
           fraction of it the destination pixel covers. When an axis is enlarged, OpenCV
           uses (on both axes) a two-tap rule: src0 = floor(dst · s), and the weight of
           src0 + 1 is the part of the destination pixel past the source pixel boundary,
           f = (dst + 1) − (src0 + 1) / s, rounded to float32, taken modulo 1, and 0 when
           negative (s = src/dst; the float32 rounding decides which source row some
           destination rows read, so it is kept).

Results are rounded to whole grey levels and clipped to [0, 255], as cv2.resize's uint8
output is. Gray conversion is 0.299 R + 0.587 G + 0.114 B rounded to a grey level (OpenCV 4
computes it in 14-bit fixed point, OpenCV 5 in 15-bit; either differs from the exact value by
one grey level on a fraction of a percent of colours).

`reference_prepare` returns the tensor contents in float64 with the tensor's own shape and
units: the integers an integer tensor holds (quantized: not dequantized), or for a float
tensor the value after the cast to its dtype. Comparisons are then `|plan − reference|` in
quantization steps or in real units directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import PreprocessError
from edge_agent.preprocess import ImageTransform, InputLayout
from edge_agent.runtime.tensors import TensorInfo

F64 = npt.NDArray[np.float64]

CUBIC_A = -0.75
INTERPOLATIONS = ("nearest", "linear", "area", "cubic")


# ---------------------------------------------------------------------------------------
# resize: one weight matrix per axis, out = Wy · image · Wxᵀ


def _nearest_weights(src: int, dst: int) -> F64:
    w = np.zeros((dst, src))
    inv = 1.0 / (dst / src)  # as OpenCV: 1 / inv_scale, in double
    for d in range(dst):
        w[d, min(math.floor(d * inv), src - 1)] = 1.0
    return w


def _two_tap(w: F64, d: int, s0: int, f: float) -> None:
    """Weight 1 − f on source s0 and f on s0 + 1, the positions clamped to the image."""
    src = w.shape[1]
    if s0 < 0:
        s0, f = 0, 0.0
    if s0 >= src - 1:
        s0, f = src - 1, 0.0
    w[d, s0] += 1.0 - f
    if f:
        w[d, s0 + 1] += f


def _linear_weights(src: int, dst: int) -> F64:
    w = np.zeros((dst, src))
    scale = src / dst
    for d in range(dst):
        pos = (d + 0.5) * scale - 0.5
        s0 = math.floor(pos)
        _two_tap(w, d, s0, pos - s0)
    return w


def _cubic_kernel(f: float) -> tuple[float, float, float, float]:
    """Keys' cubic with a = −0.75, the weights of taps −1, 0, 1, 2 at fractional offset f."""
    a = CUBIC_A

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(f + 1), near(f), near(1 - f), far(2 - f)


def _cubic_weights(src: int, dst: int) -> F64:
    w = np.zeros((dst, src))
    scale = src / dst
    for d in range(dst):
        pos = (d + 0.5) * scale - 0.5
        s0 = math.floor(pos)
        for k, c in zip(range(-1, 3), _cubic_kernel(pos - s0), strict=True):
            w[d, min(max(s0 + k, 0), src - 1)] += c  # replicated border
    return w


def _box_weights(src: int, dst: int) -> F64:
    """Destination pixel d averages [d·s, (d+1)·s) of the source, by covered fraction."""
    w = np.zeros((dst, src))
    s = src / dst
    for d in range(dst):
        lo, hi = d * s, min((d + 1) * s, src)
        for x in range(math.floor(lo), min(math.ceil(hi), src)):
            w[d, x] = max(0.0, min(hi, x + 1) - max(lo, x))
        w[d] /= hi - lo
    return w


def _area_enlarging_weights(src: int, dst: int) -> F64:
    """OpenCV's INTER_AREA when an axis is enlarged: coverage of the next source pixel."""
    w = np.zeros((dst, src))
    inv = dst / src  # OpenCV's inv_scale
    scale = 1.0 / inv
    for d in range(dst):
        s0 = math.floor(d * scale)
        # OpenCV rounds this to float32 before taking it modulo 1: a value a hair below 1
        # becomes 1, i.e. 0, and the pixel reads source s0 alone (not s0 + 1)
        f = float(np.float32((d + 1) - (s0 + 1) * inv))
        f = 0.0 if f <= 0 else f - math.floor(f)
        _two_tap(w, d, s0, f)
    return w


def resize_weights(src: tuple[int, int], dst: tuple[int, int], interpolation: str) -> tuple[F64, F64]:
    """(Wy, Wx) for a (w, h) → (w, h) resize: out = Wy · image · Wxᵀ, per channel."""
    (sw, sh), (dw, dh) = src, dst
    if interpolation == "nearest":
        return _nearest_weights(sh, dh), _nearest_weights(sw, dw)
    if interpolation == "linear":
        return _linear_weights(sh, dh), _linear_weights(sw, dw)
    if interpolation == "cubic":
        return _cubic_weights(sh, dh), _cubic_weights(sw, dw)
    if interpolation == "area":
        if dw <= sw and dh <= sh:
            return _box_weights(sh, dh), _box_weights(sw, dw)
        return _area_enlarging_weights(sh, dh), _area_enlarging_weights(sw, dw)
    raise PreprocessError(f"unknown interpolation {interpolation!r} (one of {', '.join(INTERPOLATIONS)})")


def to_grey_levels(values: F64) -> F64:
    """Round to whole grey levels (half up) and clip to [0, 255], as a uint8 image holds them."""
    return np.clip(np.floor(values + 0.5), 0.0, 255.0)


def reference_resize(pixels: npt.NDArray[Any], size: tuple[int, int], interpolation: str) -> F64:
    """`pixels` (H×W or H×W×C) resized to size = (width, height), in whole grey levels (float64)."""
    img = np.asarray(pixels, dtype=np.float64)
    h, w = img.shape[:2]
    if (w, h) == tuple(size):
        return img.copy()
    wy, wx = resize_weights((w, h), size, interpolation)
    if img.ndim == 2:
        return to_grey_levels(wy @ img @ wx.T)
    rows = np.tensordot(wy, img, axes=(1, 0))  # vertical pass: dh × W × C
    return to_grey_levels(np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1))  # horizontal: dh × dw × C


# ---------------------------------------------------------------------------------------
# geometry: which part of the frame lands where in the model's input


@dataclass(frozen=True)
class Placement:
    """The frame's crop (x, y, w, h) is resized to `size` (w, h) and put at `offset` (x, y)."""

    crop: tuple[int, int, int, int]
    size: tuple[int, int]
    offset: tuple[int, int]


def reference_placement(frame_hw: tuple[int, int], model_hw: tuple[int, int], resize: str) -> Placement:
    fh, fw = frame_hw
    height, width = model_hw
    if resize == "letterbox":
        r = min(width / fw, height / fh)
        nw, nh = max(1, round(fw * r)), max(1, round(fh * r))
        return Placement((0, 0, fw, fh), (nw, nh), ((width - nw) // 2, (height - nh) // 2))
    if resize == "center_crop":
        aspect = width / height
        if fw / fh > aspect:  # wider than the model: keep the full height, cut the sides
            cw, ch = max(1, round(fh * aspect)), fh
        else:
            cw, ch = fw, max(1, round(fw / aspect))
        return Placement(((fw - cw) // 2, (fh - ch) // 2, cw, ch), (width, height), (0, 0))
    if resize == "stretch":
        return Placement((0, 0, fw, fh), (width, height), (0, 0))
    raise PreprocessError(f"unknown resize {resize!r}")


def reference_resized(pixels: npt.NDArray[Any], transform: ImageTransform, width: int, height: int) -> F64:
    """The frame at the model's size, before color conversion (letterbox bands = pad value)."""
    p = reference_placement(pixels.shape[:2], (height, width), transform.resize)
    x, y, cw, ch = p.crop
    inner = reference_resize(pixels[y : y + ch, x : x + cw], p.size, transform.interpolation)
    out = np.full((height, width, *pixels.shape[2:]), float(transform.pad_value))
    ox, oy = p.offset
    out[oy : oy + inner.shape[0], ox : ox + inner.shape[1]] = inner
    return out


# ---------------------------------------------------------------------------------------
# color, normalization, quantization, layout


def reference_color(img: npt.NDArray[Any], order: str, color: str) -> F64:
    """Pixels in `order` ("bgr", "rgb", "gray"; gray may be H×W) → H×W×C in `color`."""
    px = np.asarray(img, dtype=np.float64)
    if px.ndim == 2:
        px = px[:, :, None]
    if order == "gray" or px.shape[2] == 1:
        return px[:, :, :1] if color == "gray" else np.repeat(px[:, :, :1], 3, axis=2)
    if order not in ("bgr", "rgb"):
        raise PreprocessError(f"unknown pixel order {order!r}")
    rgb = px if order == "rgb" else px[:, :, ::-1]
    if color == "rgb":
        return rgb.copy()
    if color == "bgr":
        return rgb[:, :, ::-1].copy()
    if color == "gray":
        gray = 0.299 * rgb[:, :, 0] + 0.587 * rgb[:, :, 1] + 0.114 * rgb[:, :, 2]
        return to_grey_levels(gray)[:, :, None]
    raise PreprocessError(f"unknown color {color!r}")


def reference_normalize(img: F64, transform: ImageTransform) -> F64:
    """prepared[..., c] = (pixel · scale − mean[c]) / std[c] on an H×W×C image."""
    channels = img.shape[2]
    mean, std = transform.per_channel(channels)
    if len(mean) != channels or len(std) != channels:
        raise PreprocessError(f"mean/std have {len(mean)}/{len(std)} values for {channels} channel(s)")
    return (img * transform.scale - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)


def round_half_away(x: F64) -> F64:
    return np.where(x >= 0, np.floor(x + 0.5), -np.floor(-x + 0.5))


def reference_quantize(prepared: F64, info: TensorInfo) -> F64:
    """Real values (H×W×C) → what the tensor holds, in float64.

    Integer tensors: round half away from zero of (value / scale), plus the zero point,
    clipped to the dtype (an unquantized integer tensor takes the rounded value). Per-channel
    scales apply when there is one per channel. Float tensors: the cast to their dtype."""
    if not info.is_integer:
        return prepared.astype(info.dtype).astype(np.float64)
    lim = np.iinfo(info.dtype)
    if not info.quantized:
        q = round_half_away(prepared)
    elif info.scales and len(info.scales) == prepared.shape[-1]:
        q = round_half_away(prepared / np.asarray(info.scales)) + np.asarray(info.zero_points, dtype=np.float64)
    else:
        q = round_half_away(prepared / info.scale) + info.zero_point
    return np.clip(q, lim.min, lim.max)


def reference_layout(hwc: F64, info: TensorInfo) -> F64:
    """H×W×C → the tensor's shape (1×H×W×C, 1×C×H×W or H×W×C)."""
    lay = InputLayout.of(info)
    out = hwc.transpose(2, 0, 1) if lay.nchw else hwc
    return out.reshape(info.shape)


def reference_from_resized(resized: npt.NDArray[Any], order: str, transform: ImageTransform, info: TensorInfo) -> F64:
    """The steps after the resize: model-size pixels in `order` → the tensor contents."""
    img = reference_color(resized, order, transform.color)
    return reference_layout(reference_quantize(reference_normalize(img, transform), info), info)


def reference_prepare(pixels: npt.NDArray[Any], order: str, transform: ImageTransform, info: TensorInfo) -> F64:
    """One frame (H×W×3 in `order`, or H×W gray) → the tensor contents, in float64.

    Integer tensors: the integer values they hold (not dequantized); float tensors: the
    values after the cast to their dtype. The shape is the tensor's."""
    lay = InputLayout.of(info)
    resized = reference_resized(pixels, transform, lay.width, lay.height)
    return reference_from_resized(resized, order, transform, info)


def reference_tolerance(transform: ImageTransform, info: TensorInfo, *, grey_levels: float = 1.0) -> F64:
    """Per channel, in the tensor's units: how far a correct plan may be from the reference
    when its input pixels differ by up to `grey_levels` (1 through a resize: OpenCV's fixed
    point; 0 on the same resized pixels), plus one quantization step for integer tensors or
    1e-5 for float32 (float16: its own precision is for the caller to add)."""
    lay = InputLayout.of(info)
    _, std = transform.per_channel(lay.channels)
    real = grey_levels * transform.scale / np.abs(np.asarray(std, dtype=np.float64))
    if info.is_integer:
        if not info.quantized:
            return real + 1.0
        scale = np.asarray(info.scales if len(info.scales) == lay.channels else (info.scale,), dtype=np.float64)
        return real / scale + 1.0
    return real + 1e-5
