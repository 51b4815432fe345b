"""Input checks before `invoke()`: frozen sources, prepared-input statistics, sensor z-scores.

Images are checked on the resized uint8 frame (a few thousand pixels, before the tensor
pass) with OpenCV's single-pass reductions, and only as often as the budget allows: by
default the checks may take `budget_percent` of the measured invoke time, so a 2 ms Coral
model is checked less often than a 100 ms CPU model. Sensor rows are tiny and are checked
every row.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.config import GuardConfig
from edge_agent.guard import GuardFault
from edge_agent.preprocess import ImagePlan, Preparation, VectorPlan
from edge_agent.sources.base import Frame

FROZEN_SAMPLE = 32  # frames are compared on a grid of about 32×32 pixels


class InputGuard:
    def __init__(self, cfg: GuardConfig, *, expected_range: tuple[float, float] | None, range_origin: str) -> None:
        self.cfg = cfg
        self.expected_range = expected_range
        self.range_origin = range_origin
        self.identical_frames = 0
        self.input_changed = True
        self._sample: npt.NDArray[Any] | None = None
        self._sample_eq: npt.NDArray[np.bool_] | None = None
        self._countdown = 0
        self._invoke_ms = 0.0
        self._check_ms = 0.0

    # ---- checked frames: is the source frozen? --------------------------------------------
    def observe(self, frame: Frame) -> GuardFault | None:
        data = frame.pixels if frame.pixels is not None else frame.values
        if data is None:
            return None
        if frame.pixels is not None:
            h, w = data.shape[:2]
            data = data[:: max(1, h // FROZEN_SAMPLE), :: max(1, w // FROZEN_SAMPLE)]
        if self._sample is None or self._sample.shape != data.shape:
            self._sample = np.empty(data.shape, dtype=data.dtype)
            self._sample_eq = np.empty(data.shape, dtype=bool)
            np.copyto(self._sample, data)
            self.input_changed = True
            return None
        assert self._sample_eq is not None
        # count_nonzero rather than .all(): a reduction allocates its iterator on every call
        same = int(np.count_nonzero(np.equal(data, self._sample, out=self._sample_eq))) == data.size
        np.copyto(self._sample, data)
        self.input_changed = not same
        self.identical_frames = self.identical_frames + 1 if same else 0
        n = self.cfg.frozen_after
        if n and self.identical_frames and self.identical_frames % n == 0:
            return GuardFault(
                "input_frozen",
                f"the last {self.identical_frames + 1} checked frames from {frame.source!r} were identical: the camera or stream "
                "is probably frozen (a stalled sensor pipeline or a dead stream delivering its last frame)",
                {"frames": self.identical_frames + 1, "source": frame.source},
                blocking=False,
                severity="warning",
            )
        return None

    # ---- sampled frames: statistics -------------------------------------------------------
    def due(self) -> bool:
        """Whether this frame's input checks (frozen source, statistics) should run."""
        if not self.cfg.check_inputs:
            return False
        if self.cfg.on_input_out_of_range == "skip":
            return True  # the operator asked for bad frames to be withheld: every frame is checked
        if self.cfg.input_check_every:
            every = self.cfg.input_check_every
        elif self._invoke_ms <= 0 or self._check_ms <= 0:
            every = 1  # not measured yet
        else:
            every = max(1, math.ceil(self._check_ms / (self.cfg.budget_percent / 100.0 * self._invoke_ms)))
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = every
            return True
        return False

    def note_invoke(self, ms: float) -> None:
        self._invoke_ms = ms if self._invoke_ms <= 0 else 0.9 * self._invoke_ms + 0.1 * ms

    def note_check(self, ms: float) -> None:
        """What the checks of one checked frame cost; the budget sets how often they run."""
        self._check_ms = ms if self._check_ms <= 0 else 0.9 * self._check_ms + 0.1 * ms

    def check(self, prep: Preparation) -> GuardFault | None:
        """The statistics of the frame just prepared (its image at the model's size, or its z-scores)."""
        if isinstance(prep.plan, VectorPlan):
            return self.check_vector(prep.plan, prep.z)
        return self.check_image(prep.plan, prep.image)

    def check_image(self, plan: ImagePlan, img: npt.NDArray[np.uint8] | None) -> GuardFault | None:
        if img is None:
            return None
        flat = img.reshape(img.shape[0], -1)  # one channel view of all values, for min/max
        pmin, pmax, _, _ = cv2.minMaxLoc(flat)
        means = cv2.mean(img)
        pixel_mean = float(np.mean(means[: 1 if img.ndim == 2 else 3]))
        t = plan.transform
        mean, std = t.per_channel(plan.layout.channels)
        # the prepared values of this frame's extremes and mean, over all channels
        lo = min((pmin * t.scale - m) / s for m, s in zip(mean, std, strict=True))
        hi = max((pmax * t.scale - m) / s for m, s in zip(mean, std, strict=True))
        avg = float(np.mean([(pixel_mean * t.scale - m) / s for m, s in zip(mean, std, strict=True)]))
        detail = {
            "pixel": {"min": pmin, "max": pmax, "mean": round(pixel_mean, 3)},
            "prepared": {"min": round(lo, 6), "max": round(hi, 6), "mean": round(avg, 6)},
        }
        info = plan.info
        if plan.clipped_values > 12 and info.is_integer:
            qlo = (np.iinfo(info.dtype).min - info.zero_point) * info.scale
            qhi = (np.iinfo(info.dtype).max - info.zero_point) * info.scale
            if lo < qlo - info.scale or hi > qhi + info.scale:
                return self._fault(
                    "input_out_of_range",
                    f"quantized input saturates: this frame's prepared values span [{lo:.4g}, {hi:.4g}] but the input "
                    f"tensor's quantization (scale {info.scale:g}, zero point {info.zero_point}) holds only "
                    f"[{qlo:.4g}, {qhi:.4g}], so {plan.clipped_values} of 256 pixel values clip: the input is not "
                    "normalized for this model, or it is quantized with the wrong scale or zero point",
                    {**detail, "quantization": {"scale": info.scale, "zero_point": info.zero_point}},
                )
        if self.expected_range is not None:
            elo, ehi = self.expected_range
            slack = (ehi - elo) * self.cfg.input_tolerance
            if lo < elo - slack or hi > ehi + slack or not (elo - slack <= avg <= ehi + slack):
                return self._fault(
                    "input_out_of_range",
                    f"input not normalized (mean {avg:.4g}, max {hi:.4g}; the model expects about [{elo:g}, {ehi:g}]"
                    f" per {self.range_origin}): check [preprocess] scale, mean and std",
                    {**detail, "expected": [elo, ehi]},
                )
        return None

    def check_vector(self, plan: VectorPlan, z: npt.NDArray[np.float64] | None) -> GuardFault | None:
        if z is None or not plan.features:
            return None
        worst = int(np.argmax(np.abs(z)))
        if abs(z[worst]) <= self.cfg.max_abs_z:
            return None
        f = plan.features[worst]
        value = f.mean + z[worst] * f.std
        return self._fault(
            "input_out_of_range",
            f"feature {f.name!r} = {value:.6g} is {z[worst]:+.1f} training standard deviations from its mean "
            f"({f.mean:g} ± {f.std:g}): a sensor glitch, a unit mix-up, or a [[preprocess.features]] mean/std that "
            "is not the training one",
            {"feature": f.name, "value": value, "z": round(float(z[worst]), 3), "max_abs_z": self.cfg.max_abs_z},
        )

    def _fault(self, kind: str, message: str, detail: dict[str, Any]) -> GuardFault:
        skip = self.cfg.on_input_out_of_range == "skip"
        suffix = "; the frame was skipped" if skip else "; the result was published but may be wrong"
        return GuardFault(kind, message + suffix, detail, blocking=skip, severity="error" if skip else "warning")
