"""Reproducing the training transform exactly, straight into the input tensor.

A plan is compiled once per model and frame size: buffers for the resize and the color
conversion are preallocated, and scale, mean, std and quantization are folded into one
256-entry table per channel, computed once from the formula

    prepared = (pixel * scale - mean[c]) / std[c]
    q        = clip(round_half_away(prepared / tensor_scale) + zero_point)   (integer tensors)

so the per-frame work is: resize → (color convert) → one table pass into the tensor.
Vectors (sensor rows) get per-feature standardization and imputation; a vector with no
`[[preprocess.features]]` into a float tensor (an audio window) is copied straight in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.config import FeatureConfig, PreprocessConfig
from edge_agent.errors import PreprocessError
from edge_agent.runtime.tensors import TensorInfo
from edge_agent.runtime.tflite_file import TfliteModelInfo
from edge_agent.sources.base import Frame

log = logging.getLogger(__name__)

INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
}


@dataclass(frozen=True)
class ImageTransform:
    """The training transform of an image model, whatever its origin (config or metadata)."""

    resize: str = "stretch"
    interpolation: str = "linear"
    color: str = "rgb"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pad_value: int = 0
    origin: str = "config"

    def per_channel(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        def expand(v: tuple[float, ...]) -> tuple[float, ...]:
            return v * channels if len(v) == 1 else v

        return expand(self.mean), expand(self.std)


@dataclass(frozen=True)
class Geometry:
    """How the model's input maps back to the source frame: src = (dst - offset) / scale."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    crop_x: int = 0
    crop_y: int = 0

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.offset_x) / self.scale_x + self.crop_x, (y - self.offset_y) / self.scale_y + self.crop_y


@dataclass(frozen=True)
class FrameGeometry:
    """Where a frame's model-input coordinates land: the plan's geometry and the frame size.
    One per plan (built with it), so handing it to each frame allocates nothing."""

    geometry: Geometry
    width: int
    height: int


def transform_from_config(cfg: PreprocessConfig) -> ImageTransform:
    return ImageTransform(cfg.resize, cfg.interpolation, cfg.color, cfg.scale, cfg.mean, cfg.std, cfg.pad_value)


def transform_from_metadata(info: TfliteModelInfo | None) -> ImageTransform | None:
    """TFLite metadata states normalization in pixel units: prepared = (pixel - mean) / std."""
    if info is None or info.metadata is None or not info.metadata.inputs:
        return None
    tm = info.metadata.inputs[0]
    if tm.normalization_mean is None and tm.normalization_std is None:
        return None
    mean = tuple(tm.normalization_mean or (0.0,))
    std = tuple(tm.normalization_std or (1.0,))
    color = "gray" if tm.color_space == "GRAYSCALE" else "rgb"
    return ImageTransform(color=color, scale=1.0, mean=mean, std=std, origin="model metadata")


def compare_transforms(config: ImageTransform, meta: ImageTransform, channels: int) -> str | None:
    """A one-line warning when the config's transform is not the model metadata's."""
    cm, cs = config.per_channel(channels)
    mm, ms = meta.per_channel(channels)
    # compare what each does to the pixel values 0 and 255
    for c in range(channels):
        for px in (0.0, 255.0):
            a = (px * config.scale - cm[c]) / cs[c]
            b = (px * meta.scale - mm[c]) / ms[c]
            if not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4):
                return (
                    f"[preprocess] maps pixel {px:g} of channel {c} to {a:.4g}, but the model's metadata says {b:.4g} "
                    f"(metadata mean {list(meta.mean)}, std {list(meta.std)}): check which one the model was trained with"
                )
    return None


def _round_half_away(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # TFLite's quantizer rounds half away from zero (std::round), not half to even
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_values(
    values: npt.NDArray[np.float64], info: TensorInfo, channel_axis_len: int | None = None
) -> npt.NDArray[Any]:
    """Real values → the tensor's dtype, using its own scale and zero point."""
    dtype = info.dtype
    if not info.is_integer:
        return values.astype(dtype)
    if not info.quantized:
        # an integer tensor without quantization takes the values as they are
        lim = np.iinfo(dtype)
        return np.clip(_round_half_away(values), lim.min, lim.max).astype(dtype)
    if info.scales and channel_axis_len is not None and len(info.scales) == channel_axis_len:
        scale = np.asarray(info.scales, dtype=np.float64)
        zp = np.asarray(info.zero_points, dtype=np.float64)
    else:
        scale = np.asarray(info.scale, dtype=np.float64)
        zp = np.asarray(info.zero_point, dtype=np.float64)
    lim = np.iinfo(dtype)
    # as TFLite's quantizer does: round(value / scale), then add the zero point
    q = _round_half_away(values / scale) + zp
    return np.clip(q, lim.min, lim.max).astype(dtype)


def build_tables(t: ImageTransform, info: TensorInfo, channels: int) -> npt.NDArray[Any]:
    """A (256, channels) table: entry [v, c] is what pixel value v of channel c becomes."""
    mean, std = t.per_channel(channels)
    if len(mean) != channels or len(std) != channels:
        bad = "mean" if len(mean) != channels else "std"
        given = len(t.mean) if bad == "mean" else len(t.std)
        raise PreprocessError(f"preprocess.{bad}: {given} values given but the model input has {channels} channel(s)")
    px = np.arange(256, dtype=np.float64)[:, None]
    prepared = (px * t.scale - np.asarray(mean)[None, :]) / np.asarray(std)[None, :]
    return quantize_values(prepared, info, channel_axis_len=channels)


def _clipping(t: ImageTransform, info: TensorInfo, channels: int) -> tuple[tuple[float, float], int]:
    mean, std = t.per_channel(channels)
    px = np.arange(256, dtype=np.float64)[:, None]
    prepared = (px * t.scale - np.asarray(mean)[None, :]) / np.asarray(std)[None, :]
    lo, hi = float(prepared.min()), float(prepared.max())
    if not (info.is_integer and info.quantized):
        return (lo, hi), 0
    lim = np.iinfo(info.dtype)
    q = _round_half_away(prepared / info.scale) + info.zero_point
    clipped = (q < lim.min) | (q > lim.max)
    return (lo, hi), int(clipped.sum(axis=0).max())


def table_identity_steps(tables: npt.NDArray[Any]) -> int:
    """How many (value, channel) entries differ from a plain copy of the pixel."""
    ident = np.arange(256, dtype=np.float64)[:, None]
    return int(np.count_nonzero(tables.astype(np.float64) != ident))


@dataclass(frozen=True)
class Prepared:
    """What preparing one frame did beyond the transform: features imputed or clipped."""

    imputed: tuple[str, ...] = ()
    clipped: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Preparation:
    """One frame prepared into the tensor, as preprocessing returns it.

    `prepared` and `geometry` belong to the frame and travel on with it (to its result and its
    decoder: with overlap, the next frame is prepared before this one is decoded). `image` and
    `z` are what the input checks read right after: views of the plan's buffers (or of the
    frame's own pixels) that the plan's next frame overwrites, so they go no further."""

    plan: ImagePlan | VectorPlan
    prepared: Prepared
    geometry: FrameGeometry | None = None  # images: where model-input coordinates land in the frame
    image: npt.NDArray[np.uint8] | None = None  # images: the frame at the model's size, uint8
    z: npt.NDArray[np.float64] | None = None  # sensor rows with features: their z-scores


@dataclass(frozen=True)
class InputLayout:
    height: int
    width: int
    channels: int
    nchw: bool

    @classmethod
    def of(cls, info: TensorInfo) -> InputLayout:
        shape = info.shape
        if len(shape) == 4 and shape[0] == 1:
            if shape[3] in (1, 3):
                return cls(shape[1], shape[2], shape[3], nchw=False)
            if shape[1] in (1, 3):
                return cls(shape[2], shape[3], shape[1], nchw=True)
        if len(shape) == 3 and shape[2] in (1, 3):
            return cls(shape[0], shape[1], shape[2], nchw=False)
        raise PreprocessError(
            f"model input {info.name!r} has shape {list(shape)}: not an image input (expected 1×H×W×C or 1×C×H×W with C = 1 or 3)"
        )


KernelName = Literal["copy", "lut", "affine", "planes"]


def _time_us(fn: Callable[[], object], runs: int = 7) -> float:
    fn()  # warm caches and OpenCV's dispatch
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


class ImagePlan:
    """The compiled transform for one frame size; `run` writes one frame into the tensor.

    The fused per-channel pass is one of:
      copy    the transform is exactly the identity on a uint8 tensor: a plain copy;
      lut     cv2.LUT with the exact 256-entry table(s), any target dtype (the only exact
              choice for integer targets: quantization rounding lives in the table);
      affine  float32 targets: one converting copy, then cv2.transform in place with a 3×4
              matrix (per-channel scale and bias; a channel swap folded into it for free);
      planes  NCHW tensors: np.take per channel plane.
    For float32 NHWC the plan keeps the affine pass only where it writes bit-identical tensors to
    the table's, and then times the two once, at build, and keeps the faster (`exact_kernels`).
    """

    def __init__(
        self,
        transform: ImageTransform,
        info: TensorInfo,
        frame_shape: tuple[int, ...],
        *,
        kernel: KernelName | Literal["auto"] = "auto",
        prefer: KernelName | None = None,
    ) -> None:
        """`kernel` forces a fused pass (an error where it cannot write this tensor); with "auto",
        `prefer` (an earlier plan's measured choice) is taken when it applies here, else the
        plan measures."""
        self.transform = transform
        self.info = info
        self.layout = lay = InputLayout.of(info)
        if (lay.channels == 1) != (transform.color == "gray"):
            raise PreprocessError(
                f"preprocess.color = {transform.color!r} but the model input has {lay.channels} channel(s)"
            )
        fh, fw = frame_shape[0], frame_shape[1]
        self.frame_shape = (fh, fw)
        self.frame_channels = frame_shape[2] if len(frame_shape) == 3 else 1
        if self.frame_channels not in (1, 3):
            raise PreprocessError(f"frames must have 1 or 3 channels, got {self.frame_channels}")
        self.interpolation = INTERPOLATION[transform.interpolation]
        self.tables = build_tables(transform, info, lay.channels)
        self.identity_steps = table_identity_steps(self.tables)
        # how the input's quantization bounds the transform: pixel values whose prepared value
        # the integer tensor cannot hold (clipped to its dtype's limits), per channel at most
        self.prepared_range, self.clipped_values = _clipping(transform, info, lay.channels)
        self.crop: tuple[int, int, int, int] = (0, 0, fw, fh)
        self.geometry = self._geometry(fh, fw)
        self.frame_geometry = FrameGeometry(self.geometry, fw, fh)
        fc = () if self.frame_channels == 1 else (3,)
        # a frame already at the model's size (an ISP that resized it) is used as it is
        self.direct = (fh, fw) == (lay.height, lay.width) and self.crop == (0, 0, fw, fh)
        self._resized = np.full((lay.height, lay.width, *fc), transform.pad_value, dtype=np.uint8)
        self._inner: npt.NDArray[np.uint8] | None = None
        self._inner_at = (0, 0)
        if transform.resize == "letterbox" and not self.direct:
            g = self.geometry
            nw, nh = max(1, round(fw * g.scale_x)), max(1, round(fh * g.scale_y))
            self._inner = np.empty((nh, nw, *fc), dtype=np.uint8)
            self._inner_at = (int(g.offset_y), int(g.offset_x))
        self._converted = np.empty(
            (lay.height, lay.width, 3) if lay.channels == 3 else (lay.height, lay.width), np.uint8
        )
        # tables as cv2.LUT takes them: (1, 256, C), or (1, 256) when every channel shares one
        shared = bool(np.all(self.tables == self.tables[:, :1]))
        lut = self.tables[:, :1] if shared else self.tables
        self._lut = np.ascontiguousarray(lut.reshape(1, 256, -1) if not shared else lut.reshape(1, 256))
        self._lut_shared = shared
        self._affine: dict[str, npt.NDArray[np.float32]] = {}
        self.kernel: KernelName = self._choose(kernel, prefer)

    # ---- building -----------------------------------------------------------------------
    def _geometry(self, fh: int, fw: int) -> Geometry:
        lay, t = self.layout, self.transform
        if t.resize == "letterbox":
            r = min(lay.width / fw, lay.height / fh)
            nw, nh = max(1, round(fw * r)), max(1, round(fh * r))
            ox, oy = (lay.width - nw) // 2, (lay.height - nh) // 2
            return Geometry(nw / fw, nh / fh, float(ox), float(oy))
        if t.resize == "center_crop":
            target = lay.width / lay.height
            if fw / fh > target:  # too wide: crop the sides
                cw, ch = max(1, round(fh * target)), fh
            else:
                cw, ch = fw, max(1, round(fw / target))
            cx, cy = (fw - cw) // 2, (fh - ch) // 2
            self.crop = (cx, cy, cw, ch)
            return Geometry(lay.width / cw, lay.height / ch, 0.0, 0.0, cx, cy)
        return Geometry(lay.width / fw, lay.height / fh, 0.0, 0.0)

    def possible_kernels(self) -> list[KernelName]:
        """The fused passes that can write this tensor from these frames."""
        lay, dtype = self.layout, self.info.dtype
        possible: list[KernelName] = []
        if lay.nchw:
            possible = ["planes"]
        else:
            if self.identity_steps == 0 and dtype == np.uint8:
                possible.append("copy")
            if dtype in (np.uint8, np.int8, np.float32, np.float16):
                possible.append("lut")
            if dtype == np.float32 and lay.channels == 3 and self.frame_channels == 3:
                possible.append("affine")
            if not possible:
                possible = ["planes"]
        return possible

    def _choose(self, requested: KernelName | Literal["auto"], prefer: KernelName | None) -> KernelName:
        lay, dtype = self.layout, self.info.dtype
        possible = self.possible_kernels()
        if requested != "auto":
            if requested not in possible:
                raise PreprocessError(f"kernel {requested!r} cannot write a {dtype.name} {lay} tensor")
            return requested
        # only kernels that write bit-identical tensors may be chosen by speed: a float32 rounding
        # step is enough to move a score on a model whose activations are quantized at run time,
        # so a choice left to timing would give one frame different results in different runs
        exact = self.exact_kernels()
        if exact[0] == "copy" or len(exact) == 1:
            return exact[0]
        if prefer in exact:
            return prefer
        # measure: which of the equivalent passes is faster here
        probe = np.zeros((1, lay.height, lay.width, lay.channels), dtype=dtype)
        img = np.zeros((lay.height, lay.width, 3), dtype=np.uint8)
        timings = {}
        for k in exact:
            timings[k] = _time_us(partial(self._fused, img, self.transform.color, probe[0], k))
        self.timings_us = timings
        return min(timings, key=lambda k: timings[k])

    def exact_kernels(self) -> list[KernelName]:
        """The kernels "auto" may pick: those whose tensor is bit-identical to the exact table's.

        The table kernels (copy, lut, planes) hold the same 256 values per channel by
        construction. The affine pass computes in float32 and may round differently: it joins
        them only when, for every pixel value of every channel and either color order, it writes
        the very same bits (checked here, on this machine's OpenCV, once per plan)."""
        possible = self.possible_kernels()
        if "affine" not in possible:
            return possible
        table_kernels: list[KernelName] = [k for k in possible if k != "affine"]
        if not table_kernels:  # cannot happen for float32 NHWC (lut serves it), kept for safety
            return ["affine"]
        lay = self.layout
        shape = (lay.height, lay.width, 3)
        per_image = lay.height * lay.width
        for order in ("bgr", "rgb"):
            for start in range(0, 256, per_image):
                img = np.empty(shape, dtype=np.uint8)
                idx = np.arange(per_image, dtype=np.int64).reshape(lay.height, lay.width)
                for c in range(3):
                    img[:, :, c] = (start + idx + 85 * c) % 256
                outs = []
                for k in (table_kernels[0], "affine"):
                    out = np.zeros((lay.height, lay.width, lay.channels), dtype=self.info.dtype)
                    self._fused(img, order, out, k)
                    outs.append(out)
                if outs[0].tobytes() != outs[1].tobytes():
                    return table_kernels
        return possible

    def _affine_matrix(self, order: str) -> npt.NDArray[np.float32]:
        m = self._affine.get(order)
        if m is None:
            mean, std = self.transform.per_channel(3)
            want = self.transform.color
            # output channel c reads input channel perm[c]: a BGR↔RGB swap costs nothing here
            perm = [2, 1, 0] if {order, want} == {"bgr", "rgb"} else [0, 1, 2]
            m = np.zeros((3, 4), dtype=np.float32)
            for c in range(3):
                m[c, perm[c]] = self.transform.scale / std[c]
                m[c, 3] = -mean[c] / std[c]
            self._affine[order] = m
        return m

    def describe(self) -> list[str]:
        lay, t = self.layout, self.transform
        mean, std = t.per_channel(lay.channels)
        resize = "used as it is (already the model's size)" if self.direct else f"{t.resize} ({t.interpolation})"
        lines = [
            f"frame {self.frame_shape[1]}×{self.frame_shape[0]} → {resize} to "
            f"{lay.width}×{lay.height}×{lay.channels} {'NCHW' if lay.nchw else 'NHWC'}",
            f"color {t.color}; prepared = (pixel × {t.scale:g} − {list(mean)}) / {list(std)}  (from {t.origin})",
            f"target {self.info.dtype.name}, quantization {self.info.describe_quantization()}",
            f"fused pass: {self.kernel}"
            + (
                " (" + ", ".join(f"{k} {v:.0f} µs" for k, v in getattr(self, "timings_us", {}).items()) + " measured)"
                if getattr(self, "timings_us", None)
                else ""
            ),
        ]
        if self.info.is_integer:
            if self.identity_steps == 0:
                lines.append("table is the identity: a plain copy")
            elif self._lut_shared:
                per = self.identity_steps // lay.channels
                lines.append(
                    f"table differs from the identity by up to {self._max_step()} step(s) on {per} of 256 values"
                )
            else:
                lines.append(
                    f"tables differ from the identity by up to {self._max_step()} step(s) on "
                    f"{self.identity_steps} of {256 * lay.channels} entries"
                )
        return lines

    def _max_step(self) -> int:
        return int(np.abs(self.tables.astype(np.float64) - np.arange(256.0)[:, None]).max())

    # ---- per frame ----------------------------------------------------------------------
    def resize(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The frame at the model's size (a view of the frame itself when no resize is needed)."""
        channels = pixels.shape[2] if pixels.ndim == 3 else 1  # H×W×1 is gray, as H×W is
        if pixels.shape[:2] != self.frame_shape or channels != self.frame_channels:

            def kind(c: int) -> str:
                return "" if channels == self.frame_channels else " gray" if c == 1 else f" {c}-channel"

            raise PreprocessError(
                f"frame is {pixels.shape[1]}×{pixels.shape[0]}{kind(channels)}, the plan was built for "
                f"{self.frame_shape[1]}×{self.frame_shape[0]}{kind(self.frame_channels)}"
            )
        if self.direct:
            return pixels
        lay = self.layout
        cx, cy, cw, ch = self.crop
        src = pixels[cy : cy + ch, cx : cx + cw]
        if self._inner is not None:
            cv2.resize(
                src, (self._inner.shape[1], self._inner.shape[0]), dst=self._inner, interpolation=self.interpolation
            )
            y, x = self._inner_at
            self._resized[y : y + self._inner.shape[0], x : x + self._inner.shape[1]] = self._inner
        else:
            cv2.resize(src, (lay.width, lay.height), dst=self._resized, interpolation=self.interpolation)
        return self._resized

    def _fused(
        self, img: npt.NDArray[np.uint8], order: str, dst: npt.NDArray[Any], kernel: KernelName | None = None
    ) -> None:
        """The one pass from resized pixels (in `order`) into the tensor memory `dst`, by the plan's
        kernel or, while the plan is being built, the one named."""
        lay = self.layout
        kernel = kernel or self.kernel
        if kernel == "affine":
            np.copyto(dst, img, casting="unsafe")
            cv2.transform(dst, self._affine_matrix(order), dst=dst)
            return
        code = _color_code(order, self.transform.color)
        if code is not None:
            cv2.cvtColor(img, code, dst=self._converted)
            img = self._converted
        if lay.channels == 1 and img.ndim == 3:
            img = img[:, :, 0] if img.shape[2] == 1 else img
        if kernel == "copy":
            np.copyto(dst, img.reshape(dst.shape))
        elif kernel == "lut":
            out = dst if lay.channels == 3 else dst.reshape(lay.height, lay.width)
            cv2.LUT(img.reshape(out.shape), self._lut, dst=out)
        else:  # planes (NCHW), or a dtype cv2.LUT does not write
            for c in range(lay.channels):
                plane = img[:, :, c] if img.ndim == 3 else img
                target = dst[c] if lay.nchw else dst[:, :, c]
                # mode="clip" keeps np.take from buffering `out` (uint8 indices are in range)
                np.take(self.tables[:, c], plane, out=target, mode="clip")

    def run(self, pixels: npt.NDArray[np.uint8], order: str, tensor: npt.NDArray[Any]) -> Preparation:
        """Write one frame (H×W×3 uint8 in `order`, or H×W gray) into the tensor view (batch of 1)."""
        img = self.resize(pixels)
        self._fused(img, order, tensor[0] if tensor.ndim == 4 else tensor)
        # the image for the input guard's statistics: no copy (the resize buffer or the frame)
        return Preparation(self, NOTHING, self.frame_geometry, image=img)


def _color_code(order: str, want: str) -> int | None:
    if order == want:
        return None
    codes = {
        ("bgr", "rgb"): cv2.COLOR_BGR2RGB,
        ("rgb", "bgr"): cv2.COLOR_RGB2BGR,
        ("bgr", "gray"): cv2.COLOR_BGR2GRAY,
        ("rgb", "gray"): cv2.COLOR_RGB2GRAY,
        ("gray", "rgb"): cv2.COLOR_GRAY2RGB,
        ("gray", "bgr"): cv2.COLOR_GRAY2BGR,
    }
    code = codes.get((order, want))
    if code is None:
        raise PreprocessError(f"cannot convert {order} frames to {want}")
    return code


class VectorPlan:
    """Sensor rows: per-feature standardization, imputation, quantization into the tensor."""

    def __init__(self, features: tuple[FeatureConfig, ...], info: TensorInfo, *, skip_missing: bool = False) -> None:
        self.info = info
        size = int(np.prod(info.shape)) if info.shape else 1
        if features and len(features) != size:
            raise PreprocessError(
                f"preprocess.features lists {len(features)} features but the model input {info.name!r} takes {size} values"
            )
        self.size = size
        self.features = features
        self.names = tuple(f.name for f in features)
        self.mean = np.array([f.mean for f in features] or [0.0] * size, dtype=np.float64)
        self.std = np.array([f.std for f in features] or [1.0] * size, dtype=np.float64)
        self._work = np.empty(size, dtype=np.float64)
        self.skip_missing = skip_missing
        # raw samples (an audio window of 144 000 values, no features): one converting copy
        # into a float tensor, with no per-frame allocation
        self.raw = not features and not info.is_integer
        self._raw = Preparation(self, NOTHING)  # a raw window's: the same every frame
        self._bounds = [
            (i, -math.inf if f.min is None else f.min, math.inf if f.max is None else f.max)
            for i, f in enumerate(features)
            if f.min is not None or f.max is not None
        ]

    def describe(self) -> list[str]:
        lines = [
            f"vector of {self.size} → {self.info.dtype.name} {list(self.info.shape)}, quantization {self.info.describe_quantization()}"
        ]
        lines += [
            f"  {f.name}: z = (x − {f.mean:g}) / {f.std:g}; missing → {'skip the row' if self.skip_missing else f.impute}"
            + (
                f"; held in [{f.min if f.min is not None else '-inf'}, {f.max if f.max is not None else 'inf'}]"
                if f.min is not None or f.max is not None
                else ""
            )
            for f in self.features
        ]
        if not self.features:
            lines.append(
                "  no [[preprocess.features]]: values are fed as they come"
                + (" (copied straight into the tensor)" if self.raw else "")
            )
        return lines

    def impute(self, values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], list[str]] | None:
        """Fill missing values per feature; None when the row is to be skipped."""
        work = self._work
        np.copyto(work, values)
        filled: list[str] = []
        missing = np.flatnonzero(np.isnan(work))
        if missing.size and self.skip_missing:
            return None
        for i in missing:
            f = self.features[i] if self.features else None
            how = f.impute if f else "skip"
            if how == "skip":
                return None
            work[i] = f.mean if how == "mean" and f else (0.0 if how == "zero" else float(how))
            filled.append(self.names[i] if self.names else str(i))
        return work, filled

    def clip(self, work: npt.NDArray[np.float64]) -> list[str]:
        """Hold each feature inside its declared [min, max]; the names of those that were out."""
        clipped: list[str] = []
        for i, lo, hi in self._bounds:
            v = work[i]
            if v < lo or v > hi:
                work[i] = lo if v < lo else hi
                clipped.append(self.names[i])
        return clipped

    def run(self, values: npt.NDArray[np.float64], tensor: npt.NDArray[Any]) -> Preparation | None:
        """Write one row into the tensor; None when the row is skipped."""
        if values.shape != (self.size,):
            raise PreprocessError(f"row has {values.size} values, the model takes {self.size}")
        # a NaN or Inf makes the sum non-finite (as does a sum past float64's range, which
        # then takes the general path); np.sum makes no temporary array, np.isnan would
        if self.raw and math.isfinite(float(np.sum(values))):
            np.copyto(tensor.reshape(-1), values, casting="same_kind")
            return self._raw  # only features have z-scores (and `values` may be a lent buffer)
        imputed = self.impute(values)
        if imputed is None:
            return None
        work, filled = imputed
        clipped = self.clip(work)
        np.subtract(work, self.mean, out=work)
        np.divide(work, self.std, out=work)  # `work` now holds the z-scores the input guard reads
        tensor.reshape(-1)[:] = quantize_values(work, self.info)
        prepared = Prepared(tuple(filled), tuple(clipped)) if filled or clipped else NOTHING
        return Preparation(self, prepared, z=work)


Plan = ImagePlan | VectorPlan


class Preprocessor:
    """Chooses and caches the plans for a model input: one per frame shape seen recently."""

    MAX_PLANS = 4

    def __init__(
        self,
        info: TensorInfo,
        transform: ImageTransform | None,
        features: tuple[FeatureConfig, ...],
        *,
        skip_missing: bool = False,
        kernel: KernelName | Literal["auto"] = "auto",
    ) -> None:
        self.info = info
        self.transform = transform
        self.features = features
        self.vector = bool(features) or len(info.shape) <= 2
        self._vector = VectorPlan(features, info, skip_missing=skip_missing) if self.vector else None
        self._plans: dict[tuple[int, ...], ImagePlan] = {}
        self._last: Plan | None = self._vector
        # the kernel is measured once per model input, not once per frame size (a later plan
        # measures again only when that choice cannot serve it, e.g. gray frames after color)
        self._kernel: KernelName | Literal["auto"] = kernel
        self._measured: KernelName | None = None

    @property
    def plan(self) -> Plan | None:
        """The plan used last (the vector plan from the start)."""
        return self._last

    def plan_for(self, frame: Frame) -> Plan:
        if self._vector is not None:
            if frame.values is None:
                raise PreprocessError("the model takes a vector of sensor values, but the source delivers images")
            return self._vector
        if frame.pixels is None:
            raise PreprocessError("the model takes images, but the source delivers sensor rows")
        shape = tuple(frame.pixels.shape)
        plan = self._plans.get(shape)
        if plan is None:
            assert self.transform is not None
            plan = ImagePlan(self.transform, self.info, shape, kernel=self._kernel, prefer=self._measured)
            self._measured = plan.kernel
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            self._plans[shape] = plan
        self._last = plan
        return plan

    def run(self, frame: Frame, tensor_fn: Callable[[], npt.NDArray[Any]]) -> Preparation | None:
        """Prepare `frame` into the tensor; None when a sensor row is skipped.

        The plans keep no view of the frame: sources lend their buffers until release(), and a
        view kept past it pins a camera buffer (picamera2 cannot unmap it on close, and its
        allocator then leaks every dmabuf of that configuration). The returned `image` may be
        such a view: it lives as long as the caller keeps it, and no longer."""
        plan = self.plan_for(frame)
        tensor = tensor_fn()
        try:
            if isinstance(plan, VectorPlan):
                assert frame.values is not None
                return plan.run(frame.values, tensor)
            assert frame.pixels is not None
            return plan.run(frame.pixels, frame.order, tensor)
        finally:
            # the view must not outlive this call: invoke() refuses to run while it exists
            del tensor


NOTHING = Prepared()
