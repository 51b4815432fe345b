"""Regression and raw outputs: named values in real units."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from edge_agent.config import PostprocessConfig
from edge_agent.postprocess.results import Values


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

    def decode(self, outputs: list[npt.NDArray[np.float32]]) -> Values:
        flat = np.concatenate([o.ravel() for o in outputs]) if len(outputs) > 1 else outputs[0].ravel()
        names = self.names_for(flat.size)
        values = tuple((n, float(v)) for n, v in zip(names, flat.tolist(), strict=False))
        return Values(values, self.units)

    @cached_property
    def units(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.cfg.units.items())
