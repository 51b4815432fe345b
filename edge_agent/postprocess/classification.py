"""Classification: activation, top-k with labels, threshold and label filters.

Per frame it allocates nothing but the result itself (a `Classification`): the activation works in a buffer kept
from frame to frame, and a small top-k is found by repeated argmax (each pass masks the
winner, the masks are undone after) instead of sorting every score (an argsort of 1001 scores
allocates 8 KB a frame, as do the float64 copies a plain softmax makes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig
from edge_agent.postprocess.results import Classification, Scored

ARGMAX_TOP_K = 16  # beyond this (or with an include filter), one stable argsort is cheaper


@dataclass
class Classifier:
    cfg: PostprocessConfig
    labels: dict[int, str]
    _buf: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0), repr=False)

    def activate(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The scores after the activation, in a buffer reused by the next frame."""
        flat = scores.reshape(-1)
        if self._buf.shape != flat.shape:
            self._buf = np.empty(flat.shape, dtype=np.float64)
        x = self._buf
        np.copyto(x, flat)
        if self.cfg.activation == "softmax":
            np.subtract(x, x.max(), out=x)
            np.exp(x, out=x)
            np.divide(x, x.sum(), out=x)
        elif self.cfg.activation == "sigmoid":
            np.negative(x, out=x)
            np.exp(x, out=x)
            np.add(x, 1.0, out=x)
            np.reciprocal(x, out=x)
        return x

    def decode(self, scores: npt.NDArray[np.float32]) -> Classification:
        return self.decode_probs(self.activate(scores))

    def decode_probs(self, probs: npt.NDArray[np.float64]) -> Classification:
        cfg = self.cfg
        if cfg.include_labels or cfg.top_k > ARGMAX_TOP_K:
            return Classification(tuple(self._top_sorted(probs)))
        return Classification(tuple(self._top_argmax(probs)))

    def _entry(self, idx: int, score: float) -> Scored | None:
        """The result entry for one class, or None when a filter drops it."""
        label = self.labels.get(idx, str(idx))
        if label in self.cfg.exclude_labels:
            return None
        return Scored(idx, label, round(score, 6))

    def _top_argmax(self, probs: npt.NDArray[np.float64]) -> list[Scored]:
        """Highest first, ties to the lower index (as a stable sort): argmax, mask, again."""
        top: list[Scored] = []
        masked: list[tuple[int, float]] = []
        try:
            while len(top) < self.cfg.top_k and len(masked) < probs.size:
                idx = int(np.argmax(probs))
                score = float(probs[idx])
                if score < self.cfg.threshold or np.isnan(score) or score == -np.inf:
                    break  # nothing further passes
                masked.append((idx, score))
                probs[idx] = -np.inf
                entry = self._entry(idx, score)
                if entry is not None:
                    top.append(entry)
        finally:
            for idx, score in masked:
                probs[idx] = score
        return top

    def _top_sorted(self, probs: npt.NDArray[np.float64]) -> list[Scored]:
        order = np.argsort(-probs, kind="stable")
        include = set(self.cfg.include_labels)
        top: list[Scored] = []
        for idx in order:
            score = float(probs[idx])
            if score < self.cfg.threshold:
                break  # sorted: nothing further passes
            label = self.labels.get(int(idx), str(int(idx)))
            if include and label not in include:
                continue
            entry = self._entry(int(idx), score)
            if entry is not None:
                top.append(entry)
                if len(top) >= self.cfg.top_k:
                    break
        return top
