"""The output checks: no result is ever published from an output holding NaN or Inf.

Run on every output tensor of every frame, before postprocessing. The common all-finite
case costs one float64 sum per output (NaN and ±Inf propagate through a sum, and a float64
accumulator cannot overflow on float32 values), with no allocation; counting, and the
diagnosis (which reads the prepared input back), run only when a check fails.
Finite-but-wrong outputs are caught too: integer outputs pinned at their maximum
("every label fires") and outputs that stay identical while the input changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
class GuardFault:
    """A check that failed: the event to raise, and whether the frame's result is withheld."""

    kind: str  # nan_output, inf_output, output_saturated, output_stuck, input_nan, input_out_of_range, ...
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True
    severity: Literal["info", "warning", "error", "critical"] = "error"


OutputFault = GuardFault  # the name the first version used


@dataclass(frozen=True)
class Context:
    """What the diagnosis knows beyond the input's statistics."""

    expected_range: tuple[float, float] | None = None  # the prepared input's range in training
    range_origin: str = ""
    nonfinite_features: tuple[str, ...] = ()
    quantization_note: str | None = None  # set when the input's quantization clips the transform
    delegate: str = "cpu"
    cpu_recheck: str | None = None  # "finite" | "nonfinite" | None (not possible)
    # what the input is: a diagnosis of "raw 0-255 pixels" is for images, not audio or sensor rows
    input_kind: InputKind | None = None  # None: not known (judged from the values alone)
    audio_full_scale: float = 1.0  # the largest audio sample the source scales to (source.wav_scale)


InputKind = Literal["image", "audio", "sensor"]
# the largest value a prepared image input holds when fed raw: 0-255 pixels (a little slack for a mean)
RAW_PIXEL_MAX = 256.0


def count_nonfinite(x: npt.NDArray[np.float32]) -> tuple[int, int, int]:
    """(NaN, +Inf, −Inf) counts; the common all-finite case costs one isfinite pass."""
    if np.isfinite(x).all():
        return 0, 0, 0
    nan = int(np.count_nonzero(np.isnan(x)))
    pos = int(np.count_nonzero(np.isposinf(x)))
    neg = int(np.count_nonzero(np.isneginf(x)))
    return nan, pos, neg


def diagnose(  # noqa: PLR0911 - the causes in the order they are weighed, first fit wins: one return each is that list
    stats: InputStats | None, input_info: TensorInfo | None, ctx: Context | None = None
) -> str:
    """The most likely cause of non-finite outputs, in words an operator can act on."""
    ctx = ctx or Context()
    if stats is None or input_info is None:
        return "the model produced non-finite values on this input"
    rng = f"input min {stats.minimum:.4g}, max {stats.maximum:.4g}, mean {stats.mean:.4g}"
    if ctx.nonfinite_features:
        names = ", ".join(ctx.nonfinite_features)
        return f"feature {names} missing (NaN/Inf) and not imputed: set [[preprocess.features]] impute for it"
    if stats.nonfinite:
        return f"{rng}, and {stats.nonfinite} input values are NaN/Inf themselves: a missing or broken sensor value reached the model"
    if ctx.cpu_recheck == "finite":
        return (
            f"{rng}: the same input gives finite outputs on the CPU, so the {ctx.delegate} delegate is at fault "
            '(set model.on_delegate_error = "fallback" or check the accelerator)'
        )
    if ctx.quantization_note:
        return f"{rng}: {ctx.quantization_note}"
    if ctx.expected_range is not None:
        lo, hi = ctx.expected_range
        slack = (hi - lo) * 0.25
        if stats.minimum < lo - slack or stats.maximum > hi + slack:
            return (
                f"input not normalized (mean {stats.mean:.4g}, max {stats.maximum:.4g}; the model expects about "
                f"[{lo:g}, {hi:g}]{' per ' + ctx.range_origin if ctx.range_origin else ''}): check [preprocess] scale, mean and std"
            )
    far = _far_outside(stats, input_info, ctx)
    if far is not None:
        return f"{rng}: {far}"
    if ctx.delegate != "cpu" and ctx.cpu_recheck is None:
        return f"{rng}: the input looks plausible, so the model itself or its {ctx.delegate} delegate produced the non-finite values"
    return (
        f"{rng}: the input looks plausible (within its range), so the model is numerically unstable for this input "
        "(an op such as log, sqrt or a division in the graph meets a value it cannot take)"
    )


def _far_outside(  # noqa: PLR0911 - one verdict per input kind, in order; split up, the order would be lost
    stats: InputStats, input_info: TensorInfo, ctx: Context
) -> str | None:
    """What an input far from what a float model takes says, by what kind of input it is."""
    if input_info.is_integer:
        return None
    peak = max(abs(stats.maximum), abs(stats.minimum))
    if ctx.input_kind == "audio":
        full = ctx.audio_full_scale
        if peak <= 1.5 * full:
            return None
        return (
            f"audio samples reach {peak:.4g}, beyond the full scale ±{full:g} the source scales to: the file holds "
            "float samples that are not normalized audio (a float WAV holds [-1, 1]), or corrupt data"
        )
    if ctx.input_kind in (None, "image") and 20.0 < stats.maximum <= RAW_PIXEL_MAX and stats.minimum >= 0.0:
        return (
            "the input looks like raw 0-255 pixels fed to a float model; if it was trained on [0, 1] "
            "or normalized input, set [preprocess] scale = 0.00392156862745098 (1/255) and its mean/std"
        )
    if peak <= 1e3:
        return None
    if ctx.input_kind == "sensor":
        return (
            "sensor values far outside any usual training range: check [[preprocess.features]] (mean, std, and "
            "min/max to hold a broken sensor's readings)"
        )
    return "the input is far outside any usual training range; check [preprocess] (scale, mean, std, features)"


def check_outputs(
    outputs: list[tuple[TensorInfo, npt.NDArray[np.float32]]],
    *,
    input_stats: InputStats | None = None,
    input_info: TensorInfo | None = None,
    lazy_input: Any = None,
    context: Any = None,
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
        ctx = context() if callable(context) else context
        cause = diagnose(input_stats, input_info, ctx)
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


def all_finite(x: npt.NDArray[Any], *, scratch: npt.NDArray[np.bool_] | None = None) -> bool:
    """True when x holds no NaN/Inf. With a preallocated boolean `scratch` of x's shape the
    test allocates nothing (np.isfinite writes into it)."""
    if not np.issubdtype(x.dtype, np.floating):
        return True
    if scratch is not None and scratch.shape == x.shape:
        # count_nonzero, not .all(): a reduction allocates its iterator on every call
        return int(np.count_nonzero(np.isfinite(x, out=scratch))) == x.size
    return bool(np.isfinite(x).all())


class OutputGuard:
    """The per-frame output checks of one model, with their preallocated buffers."""

    def __init__(self, outputs: tuple[TensorInfo, ...], *, pinned_fraction: float, stuck_after: int) -> None:
        self.outputs = outputs
        self.pinned_fraction = pinned_fraction
        self.stuck_after = stuck_after
        self._eq = [np.empty(o.shape, dtype=bool) for o in outputs]
        self._prev = [np.empty(o.shape, dtype=np.float32) for o in outputs]
        self._have_prev = False
        # each integer output's maximum as an array of its dtype: comparing with a Python int
        # would convert it on every call
        self._tops = [np.array(np.iinfo(o.dtype).max, dtype=o.dtype) if o.is_integer else None for o in outputs]
        self.same_outputs = 0  # consecutive checked frames whose outputs did not change
        # output position → rows the model wrote this frame (the rest is not the model's output)
        self.rows_in_use: Callable[[list[npt.NDArray[np.float32]]], dict[int, int] | None] | None = None

    def finite(self, outs: list[npt.NDArray[np.float32]]) -> bool:
        """Every output free of NaN/Inf; allocation-free (preallocated scratch buffers). Outputs of
        which only some rows hold values (`rows_in_use`, SSD's detection op) are checked there."""
        rows = self.rows_in_use(outs) if self.rows_in_use is not None else None
        if rows:
            return all(
                all_finite(o[0, : rows[i]]) if i in rows else all_finite(o, scratch=eq)
                for i, (o, eq) in enumerate(zip(outs, self._eq, strict=True))
            )
        return all(all_finite(o, scratch=eq) for o, eq in zip(outs, self._eq, strict=True))

    def saturated(self, raws: list[npt.NDArray[Any]]) -> GuardFault | None:
        """Integer outputs pinned at their dtype's maximum ("every label fires")."""
        for info, raw, eq, top in zip(self.outputs, raws, self._eq, self._tops, strict=True):
            if top is None or raw.size < 2 or eq.shape != raw.shape:
                continue
            pinned = int(np.count_nonzero(np.equal(raw, top, out=eq)))
            if pinned >= 2 and pinned >= self.pinned_fraction * raw.size:
                return GuardFault(
                    "output_saturated",
                    f"output {info.name or info.index!r} has {pinned} of {raw.size} values pinned at {top}, the most "
                    "its quantization can say: every label fires at once. The input is probably far outside what the "
                    "model was trained on (check [preprocess]), or the model's output quantization is broken; "
                    "the result was not published",
                    {"tensor": info.name, "pinned": pinned, "total": int(raw.size), "value": int(top)},
                )
        return None

    def stuck(self, outs: list[npt.NDArray[np.float32]], *, input_changed: bool) -> GuardFault | None:
        """Called on checked frames: outputs identical over `stuck_after` frames whose input changed."""
        if self.stuck_after <= 0:
            return None
        same = self._have_prev
        for out, prev, eq in zip(outs, self._prev, self._eq, strict=True):
            if same and prev.shape == out.shape:
                same = np.count_nonzero(np.not_equal(out, prev, out=eq)) == 0
            if prev.shape == out.shape:
                np.copyto(prev, out)
        self._have_prev = True
        if not input_changed:
            return None  # the same input may give the same output: that proves nothing
        self.same_outputs = self.same_outputs + 1 if same else 0
        if self.same_outputs >= self.stuck_after:
            n = self.same_outputs
            self.same_outputs = 0
            return GuardFault(
                "output_stuck",
                f"the outputs stayed identical over {n} checked frames while the input changed: the model always "
                "gives the same answer. Most likely the prepared input is constant (a transform that saturates every "
                "pixel: check [preprocess] scale, mean and std) or the model or its delegate is stuck",
                {"frames": n},
                blocking=False,
                severity="warning",
            )
        return None
