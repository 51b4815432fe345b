"""Tensor descriptions and (de)quantization, independent of the interpreter package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TensorInfo:
    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    # per-tensor quantization; scale 0 means "not quantized" (the TFLite convention)
    scale: float
    zero_point: int
    # per-channel quantization when the model has it (empty otherwise)
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.scale) or bool(self.scales)

    @property
    def is_integer(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.integer))

    def describe_quantization(self) -> str:
        if len(self.scales) > 1:
            return f"per-channel on axis {self.quantized_dimension} ({len(self.scales)} scales)"
        if self.quantized:
            return f"scale {self.scale:g}, zero point {self.zero_point}"
        return "none"

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorInfo:
        scale, zero_point = d.get("quantization", (0.0, 0))
        qp = d.get("quantization_parameters") or {}
        scales = tuple(float(s) for s in np.asarray(qp.get("scales", ()), dtype=np.float64).ravel())
        zps = tuple(int(z) for z in np.asarray(qp.get("zero_points", ()), dtype=np.int64).ravel())
        return cls(
            name=str(d.get("name", "")),
            index=int(d["index"]),
            shape=tuple(int(x) for x in d["shape"]),
            dtype=np.dtype(d["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
            scales=scales if len(scales) > 1 else (),
            zero_points=zps if len(scales) > 1 else (),
            quantized_dimension=int(qp.get("quantized_dimension", 0) or 0),
        )


def dequantize(
    info: TensorInfo, raw: npt.NDArray[Any], out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """Real values of an output tensor: (q - zero_point) * scale, per channel when needed."""
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    if not info.quantized:
        np.copyto(out, raw, casting="unsafe")
        return out
    if info.scales:
        shape = [1] * raw.ndim
        shape[info.quantized_dimension] = len(info.scales)
        scale = np.asarray(info.scales, dtype=np.float32).reshape(shape)
        zp = np.asarray(info.zero_points, dtype=np.float32).reshape(shape)
        np.copyto(out, raw, casting="unsafe")
        np.subtract(out, zp, out=out)
        np.multiply(out, scale, out=out)
        return out
    np.copyto(out, raw, casting="unsafe")
    np.subtract(out, np.float32(info.zero_point), out=out)
    np.multiply(out, np.float32(info.scale), out=out)
    return out
