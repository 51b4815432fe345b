"""The output check: no result is ever published from an output holding NaN or Inf.

Runs on every output tensor of every frame, before postprocessing. `np.isfinite` over a
few thousand values costs microseconds; the diagnosis (which reads the prepared input
back) runs only when a check fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.tensors import TensorInfo


@dataclass(frozen=True)
class InputStats:
    minimum: float
    maximum: float
    mean: float
    nonfinite: int

    @classmethod
    def of(cls, x: npt.NDArray[Any]) -> InputStats:
        v = x.astype(np.float64, copy=False)
        finite = np.isfinite(v)
        bad = int(v.size - np.count_nonzero(finite))
        vals = v[finite] if bad else v
        if vals.size == 0:
            return cls(float("nan"), float("nan"), float("nan"), bad)
        return cls(float(vals.min()), float(vals.max()), float(vals.mean()), bad)


@dataclass(frozen=True)
class OutputFault:
    kind: str  # "nan_output" or "inf_output"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


def count_nonfinite(x: npt.NDArray[np.float32]) -> tuple[int, int, int]:
    """(NaN, +Inf, −Inf) counts; the common all-finite case costs one isfinite pass."""
    if np.isfinite(x).all():
        return 0, 0, 0
    nan = int(np.count_nonzero(np.isnan(x)))
    pos = int(np.count_nonzero(np.isposinf(x)))
    neg = int(np.count_nonzero(np.isneginf(x)))
    return nan, pos, neg


def diagnose(stats: InputStats | None, input_info: TensorInfo | None) -> str:
    """The most likely cause, in words an operator can act on."""
    if stats is None or input_info is None:
        return "the model produced non-finite values on this input"
    rng = f"input min {stats.minimum:.4g}, max {stats.maximum:.4g}, mean {stats.mean:.4g}"
    if stats.nonfinite:
        return f"{rng}, and {stats.nonfinite} input values are NaN/Inf themselves: a missing or broken sensor value reached the model"
    if not input_info.is_integer and stats.maximum > 20.0 and stats.minimum >= 0.0:
        return (
            f"{rng}: the input looks like raw 0-255 pixels fed to a float model; if it was trained on [0, 1] "
            "or normalized input, set [preprocess] scale = 0.00392156862745098 (1/255) and its mean/std"
        )
    if not input_info.is_integer and (abs(stats.maximum) > 1e3 or abs(stats.minimum) > 1e3):
        return (
            f"{rng}: the input is far outside any usual training range; check [preprocess] (scale, mean, std, features)"
        )
    return f"{rng}: the input looks plausible, so the model itself (or its delegate) produced the non-finite values"


def check_outputs(
    outputs: list[tuple[TensorInfo, npt.NDArray[np.float32]]],
    *,
    input_stats: InputStats | None = None,
    input_info: TensorInfo | None = None,
    lazy_input: Any = None,
) -> OutputFault | None:
    """The first fault found over all outputs, or None when every value is finite.

    `lazy_input` is a callable returning the prepared input; it is called only on a fault.
    """
    for info, values in outputs:
        nan, pos, neg = count_nonfinite(values)
        if nan == pos == neg == 0:
            continue
        total = int(values.size)
        if input_stats is None and lazy_input is not None:
            input_stats = InputStats.of(lazy_input())
        kind = "nan_output" if nan else "inf_output"
        what = ", ".join(f"{n} {label}" for n, label in ((nan, "NaN"), (pos, "+Inf"), (neg, "-Inf")) if n)
        bad = nan + pos + neg
        cause = diagnose(input_stats, input_info)
        message = (
            f"output {info.name or info.index!r} has {what} of {total} values ({bad / total:.0%}); "
            f"the result was not published. {cause}"
        )
        detail: dict[str, Any] = {
            "tensor": info.name,
            "nan": nan,
            "posinf": pos,
            "neginf": neg,
            "total": total,
            "fraction": round(bad / total, 6),
        }
        if input_stats is not None:
            detail["input"] = {
                "min": _num(input_stats.minimum),
                "max": _num(input_stats.maximum),
                "mean": _num(input_stats.mean),
                "nonfinite": input_stats.nonfinite,
            }
        return OutputFault(kind, message, detail)
    return None


def _num(x: float) -> float | None:
    # JSON has no NaN: report it as null
    return round(x, 6) if np.isfinite(x) else None
