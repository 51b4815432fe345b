"""Classification: activation, top-k with labels, threshold and label filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig


@dataclass(frozen=True)
class Classifier:
    cfg: PostprocessConfig
    labels: dict[int, str]

    def activate(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = scores.astype(np.float64).ravel()
        if self.cfg.activation == "softmax":
            e = np.exp(x - x.max())
            probs: npt.NDArray[np.float64] = e / e.sum()
            return probs
        if self.cfg.activation == "sigmoid":
            out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-x))
            return out
        return x

    def decode(self, scores: npt.NDArray[np.float32]) -> dict[str, Any]:
        return self.decode_probs(self.activate(scores))

    def decode_probs(self, probs: npt.NDArray[np.float64]) -> dict[str, Any]:
        order = np.argsort(-probs, kind="stable")
        include, exclude = set(self.cfg.include_labels), set(self.cfg.exclude_labels)
        top: list[dict[str, Any]] = []
        for idx in order:
            score = float(probs[idx])
            if score < self.cfg.threshold:
                break  # sorted: nothing further passes
            label = self.labels.get(int(idx), str(int(idx)))
            if (include and label not in include) or label in exclude:
                continue
            top.append({"index": int(idx), "label": label, "score": round(score, 6)})
            if len(top) >= self.cfg.top_k:
                break
        return {"top": top}
