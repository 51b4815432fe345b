"""Regression and raw outputs: named values in real units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig


@dataclass(frozen=True)
class Regressor:
    cfg: PostprocessConfig
    output_names: tuple[str, ...]

    def names_for(self, count: int) -> tuple[str, ...]:
        if self.cfg.value_names:
            return self.cfg.value_names
        if count == 1 and len(self.output_names) == 1:
            return self.output_names
        return tuple(f"value{i}" for i in range(count))

    def decode(self, outputs: list[npt.NDArray[np.float32]]) -> dict[str, Any]:
        flat = np.concatenate([o.ravel() for o in outputs]) if len(outputs) > 1 else outputs[0].ravel()
        names = self.names_for(flat.size)
        values = {n: float(v) for n, v in zip(names, flat.tolist(), strict=False)}
        result: dict[str, Any] = {"values": values}
        if self.cfg.units:
            result["units"] = dict(self.cfg.units)
        return result
