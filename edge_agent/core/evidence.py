"""What a fault event carries about the frame it came from, as received (before preprocessing)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from edge_agent.sources.base import Frame

# an event names the values of a sensor row; longer vectors (audio windows) are summarised
EVIDENCE_VALUES_MAX = 64


def frame_evidence(frame: Frame) -> dict[str, Any]:
    ev: dict[str, Any] = {"seq": frame.seq, "source": frame.source}
    if frame.pixels is not None:
        lo, hi, _, _ = cv2.minMaxLoc(frame.pixels.reshape(frame.pixels.shape[0], -1))
        ev["pixels"] = {"min": lo, "max": hi, "mean": round(float(np.mean(cv2.mean(frame.pixels)[:3])), 3)}
    elif frame.values is not None and frame.values.size <= EVIDENCE_VALUES_MAX:
        ev["values"] = [None if not math.isfinite(v) else v for v in frame.values.tolist()]
    elif frame.values is not None:
        v = frame.values
        finite = v[np.isfinite(v)]
        ev["values_summary"] = {
            "n": int(v.size),
            "non_finite": int(v.size - finite.size),
            **(
                {"min": float(finite.min()), "max": float(finite.max()), "mean": round(float(finite.mean()), 6)}
                if finite.size
                else {}
            ),
        }
    return ev
