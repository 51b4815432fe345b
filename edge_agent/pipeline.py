"""One model's path from a frame to a result: preprocess → invoke → output check → decode.

Built once per model (and rebuilt when the model changes); `process` is the per-frame
work and returns a value saying what happened, never raising for a bad frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import AgentConfig
from edge_agent.errors import ModelError, PreprocessError
from edge_agent.guard import InputStats, OutputFault, check_outputs
from edge_agent.postprocess.classification import Classifier
from edge_agent.postprocess.labels import load_labels
from edge_agent.postprocess.regression import Regressor
from edge_agent.preprocess import (
    ImageTransform,
    Preprocessor,
    compare_transforms,
    transform_from_config,
    transform_from_metadata,
)
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.tflite_file import labels_from_metadata
from edge_agent.sources.base import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inference:
    fields: dict[str, Any]
    latency_ms: dict[str, float]
    imputed: tuple[str, ...] = ()
    clipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fault:
    fault: OutputFault
    latency_ms: dict[str, float]


@dataclass(frozen=True)
class Skipped:
    kind: str  # event kind: "input_nan", "source_error", "model_error"
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


Outcome = Inference | Fault | Skipped

SUPPORTED_TASKS = ("classification", "regression", "raw")


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)


class Pipeline:
    def __init__(self, cfg: AgentConfig, model: LoadedModel) -> None:
        self.cfg = cfg
        self.model = model
        self.task = cfg.model.task
        self.warnings: list[str] = list(model.notes)
        if self.task not in SUPPORTED_TASKS:
            raise ModelError(
                f"model.task = {self.task!r} is not decoded by this version (supported: {', '.join(SUPPORTED_TASKS)})",
                reason="task",
            )
        if len(model.inputs) != 1:
            raise ModelError(
                f"{model.name} has {len(model.inputs)} inputs; edge-agent feeds models with one input", reason="inputs"
            )
        info = model.inputs[0]
        features = cfg.preprocess.features if cfg.preprocess else ()
        transform = self._transform(info)
        self.pre = Preprocessor(info, transform, features, skip_missing=cfg.guard.on_input_nan == "skip")
        self._tensor_fn = model.input_view(0)
        self.decoder: Callable[[list[npt.NDArray[np.float32]]], dict[str, Any]]
        if self.task == "classification":
            clf = Classifier(cfg.postprocess, self._labels())
            self.decoder = lambda outs: clf.decode(outs[0])
        else:
            reg = Regressor(cfg.postprocess, tuple(o.name for o in model.outputs))
            total = sum(int(np.prod(o.shape)) for o in model.outputs)
            if cfg.postprocess.value_names and len(cfg.postprocess.value_names) != total:
                raise ModelError(
                    f"postprocess.value_names: {len(cfg.postprocess.value_names)} names, but the model outputs {total} values",
                    reason="outputs",
                )
            self.decoder = reg.decode

    @classmethod
    def load(cls, cfg: AgentConfig) -> Pipeline:
        return cls(cfg, load_model(cfg.model))

    def _transform(self, info: Any) -> ImageTransform | None:
        if len(info.shape) <= 2 or (self.cfg.preprocess is not None and self.cfg.preprocess.features):
            return None
        meta = transform_from_metadata(self.model.file.info)
        channels = info.shape[-1] if info.shape[-1] in (1, 3) else info.shape[1]
        if self.cfg.preprocess is None:
            if meta is None:
                self.warnings.append(
                    "no [preprocess] in the config and no normalization in the model's metadata: "
                    "pixels are fed as they are (0-255, quantized with the input tensor's scale when it is an integer type)"
                )
                return ImageTransform(color="gray" if channels == 1 else "rgb", origin="default (raw pixels)")
            return meta
        mine = transform_from_config(self.cfg.preprocess)
        if meta is not None:
            warning = compare_transforms(mine, meta, channels)
            if warning:
                self.warnings.append(warning)
        return mine

    def _labels(self) -> dict[int, str]:
        if self.cfg.model.labels:
            return load_labels(self.cfg.model.labels)
        embedded = labels_from_metadata(self.model.file.info)
        if embedded:
            return dict(enumerate(embedded))
        return {}

    def describe(self, frame: Frame | None = None) -> list[str]:
        if frame is not None:
            return self.pre.plan_for(frame).describe()
        plan = self.pre.plan
        return plan.describe() if plan is not None else ["image plan: compiled for the first frame's size"]

    def _prepared_input(self) -> npt.NDArray[Any]:
        raw = self.model.interpreter.get_tensor(self.model.inputs[0].index)
        info = self.model.inputs[0]
        if info.is_integer and info.quantized:
            return (raw.astype(np.float64) - info.zero_point) * info.scale  # type: ignore[no-any-return]
        return raw  # type: ignore[no-any-return]

    def process(self, frame: Frame) -> Outcome:
        t0 = time.monotonic()
        try:
            prepared = self.pre.run(frame, self._tensor_fn)
        except PreprocessError as err:
            return Skipped("source_error", f"{frame.source}: {err}", {"source": frame.source})
        if prepared is None:
            return Skipped(
                "input_nan",
                f"{frame.source}: missing value in a feature configured impute = 'skip'; row skipped",
                {"source": frame.source},
            )
        t1 = time.monotonic()
        self.model.invoke()  # ModelError propagates: the agent decides what a failing model means
        t2 = time.monotonic()
        outs = [self.model.output(i) for i in range(len(self.model.outputs))]
        fault = check_outputs(
            list(zip(self.model.outputs, outs, strict=True)),
            input_info=self.model.inputs[0],
            lazy_input=self._prepared_input,
        )
        t3 = time.monotonic()
        if fault is not None:
            return Fault(fault, {"preprocess": _ms(t0, t1), "invoke": _ms(t1, t2), "guard": _ms(t2, t3)})
        fields = self.decoder(outs)
        t4 = time.monotonic()
        latency = {
            "preprocess": _ms(t0, t1),
            "invoke": _ms(t1, t2),
            "guard": _ms(t2, t3),
            "postprocess": _ms(t3, t4),
            "total": _ms(t0, t4),
        }
        return Inference(fields, latency, prepared.imputed, prepared.clipped)

    def selftest(self) -> Outcome:
        """One inference on a mid-gray frame (or the features' means): the model must answer finitely."""
        info = self.model.inputs[0]
        now = time.time()
        if self.pre.vector:
            size = int(np.prod(info.shape))
            means = [f.mean for f in self.pre.features] or [0.0] * size
            frame = Frame(0, now, time.monotonic(), "selftest", values=np.asarray(means, dtype=np.float64))
        else:
            h, w = (info.shape[1], info.shape[2]) if info.shape[-1] in (1, 3) else (info.shape[2], info.shape[3])
            frame = Frame(0, now, time.monotonic(), "selftest", pixels=np.full((h, w, 3), 128, np.uint8), order="bgr")
        return self.process(frame)


def input_stats_of(model: LoadedModel) -> InputStats:
    return InputStats.of(model.interpreter.get_tensor(model.inputs[0].index))
