"""One model's path from a frame to a result: preprocess → invoke → output check → decode.

Built once per model (and rebuilt when the model changes); `process` is the per-frame
work and returns a value saying what happened, never raising for a bad frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config import AgentConfig, ModelConfig
from edge_agent.errors import ModelError, PreprocessError
from edge_agent.guard import Context, GuardFault, OutputFault, OutputGuard, all_finite, check_outputs
from edge_agent.input_guard import InputGuard
from edge_agent.postprocess.classification import Classifier
from edge_agent.postprocess.detection import DetectionDecoder
from edge_agent.postprocess.labels import labels_mismatch, load_labels
from edge_agent.postprocess.pose import PoseDecoder
from edge_agent.postprocess.regression import Regressor
from edge_agent.postprocess.results import Result
from edge_agent.postprocess.segmentation import Segmenter
from edge_agent.preprocess import (
    FrameGeometry,
    Geometry,
    ImagePlan,
    ImageTransform,
    InputLayout,
    Prepared,
    Preprocessor,
    compare_transforms,
    transform_from_config,
    transform_from_metadata,
)
from edge_agent.runtime.loader import LoadedModel, load_model
from edge_agent.runtime.model import InferenceModel
from edge_agent.runtime.tflite_file import labels_from_metadata
from edge_agent.runtime.worker import BackendFactory, open_model
from edge_agent.sources.base import Frame
from edge_agent.sources.wav_source import SCALES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inference:
    result: Result  # the task's decoded result; `to_payload()` gives its fields of the result message
    latency_ms: dict[str, float]
    imputed: tuple[str, ...] = ()
    clipped: tuple[str, ...] = ()
    warnings: tuple[GuardFault, ...] = ()  # checks that failed without withholding the result


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


@dataclass(frozen=True)
class Notice:
    """Something about a model's setup that is wrong but not fatal (the labels do not fit the
    classes): said once when the pipeline is adopted, as a warning event of this kind."""

    kind: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Staged:
    """A frame preprocessed into `target` and checked, waiting for its invoke.

    Everything its outputs need once they come back travels here, not on the pipeline: with
    overlap, the next frame is staged (maybe at another size) while this one is inferred."""

    frame: Frame
    prepared: Prepared
    geometry: FrameGeometry | None  # images: where the model's coordinates land in this frame
    warnings: tuple[GuardFault, ...]
    checked: bool  # the input checks ran on this frame
    input_changed: bool  # checked, and not the same input as the last checked frame
    target: Callable[[], npt.NDArray[Any]]  # where its input was written: a bad output's diagnosis reads it
    t0: float
    t_staged: float


# outputs of one frame (and where its model coordinates land) → its result
Decoder = Callable[[list[npt.NDArray[np.float32]], FrameGeometry | None], Result]


SUPPORTED_TASKS = ("classification", "regression", "raw", "detection", "pose", "segmentation")
IMAGE_SOURCES = ("images", "opencv", "picamera2", "synthetic")


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)


def _in_frame(where: FrameGeometry | None) -> FrameGeometry:
    """The geometry an image task's decoder maps through (its frames are images: checked when built)."""
    assert where is not None, "an image task's frame staged without its geometry"
    return where


def _mapping(where: FrameGeometry | None) -> tuple[Geometry, tuple[int, int]]:
    """A frame's geometry and size (width, height), as pose and segmentation take them."""
    frame = _in_frame(where)
    return frame.geometry, (frame.width, frame.height)


class Pipeline:
    def __init__(self, cfg: AgentConfig, model: InferenceModel, *, source_check: bool = True) -> None:
        """`source_check`: refuse a model whose input does not take what source.kind delivers
        (off for `check`, which feeds sample files instead of the source)."""
        self.cfg = cfg
        self.model = model
        self.task = cfg.model.task
        self.warnings: list[str] = list(model.notes)
        self.notices: list[Notice] = []
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
        delivers = "images" if cfg.source.kind in IMAGE_SOURCES else "vectors"
        if source_check and (delivers == "images") == self.pre.vector:
            takes = f"a vector input {list(info.shape)}" if self.pre.vector else f"an image input {list(info.shape)}"
            raise ModelError(
                f"{model.name} takes {takes}, but source.kind = {cfg.source.kind!r} delivers {delivers}",
                reason="inputs",
            )
        self._tensor_fn = model.input_view(0)
        self.decoder: Decoder
        self.classifier: Classifier | None = None
        self._cpu_model: LoadedModel | None = None
        self.output_guard = OutputGuard(
            model.outputs, pinned_fraction=cfg.guard.pinned_fraction, stuck_after=cfg.guard.stuck_after
        )
        expected, origin = self._expected_range()
        self.input_guard = InputGuard(cfg.guard, expected_range=expected, range_origin=origin)
        self.segmenter: Segmenter | None = None
        if self.task == "classification":
            self.classifier = Classifier(cfg.postprocess, self._labels())
            self._check_labels(self.classifier.labels, int(np.prod(model.outputs[0].shape)) if model.outputs else 0)
            classifier = self.classifier
            self.decoder = lambda outs, _: classifier.decode(outs[0])
        elif self.task in ("pose", "segmentation"):
            self.decoder = self._image_decoder(cfg, model)
        elif self.task == "detection":
            detector = self.detector = self._detector()
            self.output_guard.rows_in_use = detector.rows_in_use
            self.decoder = lambda outs, where: detector.decode(outs, _in_frame(where))
        else:
            reg = Regressor(cfg.postprocess, tuple(o.name for o in model.outputs))
            total = sum(int(np.prod(o.shape)) for o in model.outputs)
            if cfg.postprocess.value_names and len(cfg.postprocess.value_names) != total:
                raise ModelError(
                    f"postprocess.value_names: {len(cfg.postprocess.value_names)} names, but the model outputs {total} values",
                    reason="outputs",
                )
            self.decoder = lambda outs, _: reg.decode(outs)

    def _image_decoder(self, cfg: AgentConfig, model: InferenceModel) -> Decoder:
        """Pose and segmentation map model coordinates back through the frame's geometry."""
        if not isinstance(self.pre.transform, ImageTransform) or self.pre.vector:
            raise ModelError(f"model.task = {self.task!r} needs an image input", reason="inputs")
        try:
            lay = InputLayout.of(model.inputs[0])
        except PreprocessError as err:
            raise ModelError(f"model.task = {self.task!r}: {err}", reason="inputs") from None
        shape, hw = tuple(model.outputs[0].shape), (lay.height, lay.width)
        if self.task == "pose":
            pose = PoseDecoder(cfg.postprocess, shape, hw)
            return lambda outs, where: pose.decode(outs[0], *_mapping(where))
        seg = self.segmenter = Segmenter(cfg.postprocess, self._labels(), shape, hw)
        self._check_labels(seg.labels, seg.channels)
        return lambda outs, where: seg.decode(outs[0], *_mapping(where))

    @classmethod
    def load(
        cls,
        cfg: AgentConfig,
        model_cfg: ModelConfig | None = None,
        *,
        backend_factory: BackendFactory | None = None,
        source_check: bool = True,
    ) -> Pipeline:
        """The pipeline for cfg, with cfg.model or another model config (a fallback, a retry)."""
        model = open_model(model_cfg or cfg.model, backend_factory=backend_factory)
        try:
            return cls(cfg, model, source_check=source_check)
        except ModelError:
            model.close()
            raise

    def close(self) -> None:
        """Stop an isolated model's worker process (nothing to do for an inline model)."""
        self.model.close()
        if self._cpu_model is not None:
            self._cpu_model = None

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

    def _detector(self) -> DetectionDecoder:
        if self.pre.vector:
            raise ModelError(f'{self.model.name}: model.task = "detection" needs an image input', reason="inputs")
        lay = InputLayout.of(self.model.inputs[0])
        det = DetectionDecoder(
            self.cfg.postprocess,
            self._labels(),
            self.model.outputs,
            (lay.width, lay.height),
            self.model.file.info.custom_op_outputs,
        )
        log.info("%s: %s", self.model.name, det.describe())
        if det.layout.classes:  # YOLO says its class count by its shape (SSD's op does not)
            self._check_labels(det.labels, det.layout.classes)
        return det

    def _labels(self) -> dict[int, str]:
        if self.cfg.model.labels:
            return load_labels(self.cfg.model.labels)
        embedded = labels_from_metadata(self.model.file.info)
        if embedded:
            return dict(enumerate(embedded))
        return {}

    def _check_labels(self, labels: dict[int, str], classes: int) -> None:
        """Labels that do not fit the classes do not stop the model (a result by number is still a
        result), but a fleet user must hear it once, with both counts, not find "3".."9" later."""
        problem = labels_mismatch(labels, classes)
        if problem is None:
            return
        origin = f"model.labels ({self.cfg.model.labels})" if self.cfg.model.labels else "the model's embedded labels"
        message = f"{origin}: {problem}"
        self.notices.append(
            Notice(
                "labels_mismatch",
                message,
                {
                    "labels": len(labels),
                    "classes": classes,
                    "path": self.cfg.model.labels or "(embedded)",
                    "model": self.model.name,
                },
            )
        )

    def describe(self, frame: Frame | None = None) -> list[str]:
        if frame is not None:
            return self.pre.plan_for(frame).describe()
        plan = self.pre.plan
        return plan.describe() if plan is not None else ["image plan: compiled for the first frame's size"]

    def _prepared_input(self, target: Callable[[], npt.NDArray[Any]]) -> npt.NDArray[Any]:
        # the input of the frame being diagnosed, where it was staged (the tensor may hold the next one)
        raw = np.array(target())
        info = self.model.inputs[0]
        if info.is_integer and info.quantized:
            return (raw.astype(np.float64) - info.zero_point) * info.scale
        return raw

    def _expected_range(self) -> tuple[tuple[float, float] | None, str]:
        """The prepared input's range in training, when something other than our own transform says it."""
        if self.cfg.guard.expected_input_range is not None:
            return self.cfg.guard.expected_input_range, "[guard] expected_input_range"
        meta = transform_from_metadata(self.model.file.info)
        if meta is not None and self.cfg.preprocess is not None and not self.pre.vector:
            mean, std = meta.per_channel(3)
            ends = [(px * meta.scale - m) / s for px in (0.0, 255.0) for m, s in zip(mean, std, strict=True)]
            return (min(ends), max(ends)), "the model's metadata"
        return None, ""

    def _context(self, target: Callable[[], npt.NDArray[Any]]) -> Context:
        """What the diagnosis of a non-finite output needs; built only when one happens."""
        # any of the pipeline's plans will do (with overlap the last one may be the next frame's):
        # what the quantization clips is the transform's and the tensor's, at every frame size
        plan = self.pre.plan
        note = None
        info = self.model.inputs[0]
        if isinstance(plan, ImagePlan) and plan.clipped_values > 12 and info.is_integer:
            lo, hi = plan.prepared_range
            note = (
                f"the input tensor's quantization (scale {info.scale:g}, zero point {info.zero_point}) clips "
                f"{plan.clipped_values} of 256 pixel values of the transform's range [{lo:.4g}, {hi:.4g}]: "
                "the input is quantized with the wrong scale or zero point, or not normalized"
            )
        return Context(
            expected_range=self.input_guard.expected_range,
            range_origin=self.input_guard.range_origin,
            quantization_note=note,
            delegate=self.model.delegate,
            cpu_recheck=self._cpu_recheck(target),
            input_kind="image" if not self.pre.vector else "audio" if self.cfg.source.kind == "wav" else "sensor",
            audio_full_scale=SCALES[self.cfg.source.wav_scale],
        )

    def _cpu_recheck(self, target: Callable[[], npt.NDArray[Any]]) -> str | None:
        """Re-run the failing input (its frame's, from where it was staged) on a CPU interpreter
        when the model ran on a delegate."""
        if self.model.delegate == "cpu":
            return None
        try:
            if self._cpu_model is None:
                path = self.cfg.model.fallback_path or self.cfg.model.path
                cpu_cfg = self.cfg.model.model_copy(update={"path": path, "delegate": "cpu", "sha256": None})
                self._cpu_model = load_model(cpu_cfg, backend=self.model.backend)
            cpu = self._cpu_model
            if cpu.inputs[0].shape != self.model.inputs[0].shape or cpu.inputs[0].dtype != self.model.inputs[0].dtype:
                return None
            cpu.set_input(0, np.array(target()))  # a copy: no view of the staged memory outlives this
            cpu.invoke()
            _, outs = cpu.fetch_outputs()
        except ModelError:
            return None
        return "finite" if all(all_finite(o) for o in outs) else "nonfinite"

    def _latency(self, marks: list[float]) -> dict[str, float]:
        names = ("preprocess", "invoke", "guard", "postprocess")
        lat = {n: _ms(a, b) for n, a, b in zip(names, marks, marks[1:], strict=False)}
        lat["total"] = _ms(marks[0], marks[-1])
        return lat

    def process(self, frame: Frame, *, stateful: bool = True) -> Outcome:
        """One frame through preprocess → input checks → invoke → output checks → decode.

        `stateful=False` (the self-test) leaves the frozen/stuck/sampling state untouched."""
        staged = self.stage(frame, self._tensor_fn, stateful=stateful)
        if not isinstance(staged, Staged):
            return staged
        t1 = time.monotonic()
        self.model.invoke()  # ModelError propagates: the agent decides what a failing model means
        t2 = time.monotonic()
        raws, outs = self.model.fetch_outputs()
        return self.finish(staged, t1, t2, raws, outs)

    def stage(self, frame: Frame, target: Callable[[], npt.NDArray[Any]], *, stateful: bool = True) -> Staged | Outcome:
        """Preprocess into `target` (the input tensor, or a staging buffer copied into it later)
        and check the input. An Outcome when the frame goes no further (skipped, input fault)."""
        guard, ig = self.cfg.guard, self.input_guard
        warnings: list[GuardFault] = []
        t0 = time.monotonic()
        # the input checks run on the frames the budget allows (every sensor row: they are tiny)
        checked = stateful and (self.pre.vector or ig.due())
        check_s = 0.0
        if checked:
            c0 = time.perf_counter()
            frozen = ig.observe(frame)
            check_s += time.perf_counter() - c0
            if frozen is not None:
                warnings.append(frozen)
        try:
            prep = self.pre.run(frame, target)
        except PreprocessError as err:
            return Skipped("source_error", f"{frame.source}: {err}", {"source": frame.source})
        if prep is None:
            return self._skipped_row(frame)
        if checked and guard.check_inputs:
            c0 = time.perf_counter()
            fault = ig.check(prep)  # reads the views `prep` holds: before anything else is prepared
            ig.note_check((check_s + time.perf_counter() - c0) * 1000.0)
            if fault is not None:
                if fault.blocking:
                    return Fault(fault, self._latency([t0, time.monotonic()]))
                warnings.append(fault)
        # `prep` (and the views of buffers the next frame overwrites) ends here; what the
        # outputs need travels on in the Staged value
        return Staged(
            frame,
            prep.prepared,
            prep.geometry,
            tuple(warnings),
            checked,
            # the stuck-output check needs this frame's answer, not the one of the frame staged next
            checked and ig.input_changed,
            target,
            t0,
            time.monotonic(),
        )

    def finish(
        self,
        staged: Staged,
        t1: float,
        t2: float,
        raws: list[npt.NDArray[Any]],
        outs: list[npt.NDArray[np.float32]],
    ) -> Outcome:
        """The outputs of the invoke (t1 → t2) that `staged` fed: checked, then decoded."""
        guard, ig = self.cfg.guard, self.input_guard
        warnings = list(staged.warnings)
        ig.note_invoke((t2 - t1) * 1000.0)
        tf = time.monotonic()  # with overlap, later than t2: the loop took the outputs when it could
        if guard.check_outputs:
            fault = self._check_outputs(raws, outs, staged)
            if fault is not None:
                if fault.blocking:
                    return Fault(fault, self._stage_latency(staged, t1, t2, tf, time.monotonic()))
                warnings.append(fault)
        t3 = time.monotonic()
        result: Result
        if self.classifier is not None:
            probs = self.classifier.activate(outs[0])
            lo, hi = float(probs.min()), float(probs.max())
            if guard.check_outputs and (lo < -1e-6 or hi > 1.0 + 1e-6):
                lat = self._stage_latency(staged, t1, t2, tf, t3, time.monotonic())
                return Fault(self._scores_fault(lo, hi), lat)
            result = self.classifier.decode_probs(probs)
        else:
            result = self.decoder(outs, staged.geometry)
        t4 = time.monotonic()
        return Inference(
            result,
            self._stage_latency(staged, t1, t2, tf, t3, t4),
            staged.prepared.imputed,
            staged.prepared.clipped,
            tuple(warnings),
        )

    @staticmethod
    def _stage_latency(staged: Staged, t1: float, t2: float, tf: float, *ends: float) -> dict[str, float]:
        """Each stage's own duration (a wait for the invoke before, or for the loop after, is
        not counted in a stage); `total` is from the start of preprocessing to the end."""
        lat = {"preprocess": _ms(staged.t0, staged.t_staged), "invoke": _ms(t1, t2)}
        for name, a, b in zip(("guard", "postprocess"), (tf, *ends), ends, strict=False):
            lat[name] = _ms(a, b)
        lat["total"] = _ms(staged.t0, ends[-1] if ends else t2)
        return lat

    def _check_outputs(
        self, raws: list[npt.NDArray[Any]], outs: list[npt.NDArray[np.float32]], staged: Staged
    ) -> GuardFault | None:
        if not self.output_guard.finite(outs):
            return check_outputs(
                list(zip(self.model.outputs, outs, strict=True)),
                input_info=self.model.inputs[0],
                lazy_input=partial(self._prepared_input, staged.target),
                context=partial(self._context, staged.target),
            )
        fault = self.output_guard.saturated(raws)
        if fault is None and staged.checked:
            fault = self.output_guard.stuck(outs, input_changed=staged.input_changed)
        return fault

    def _scores_fault(self, lo: float, hi: float) -> GuardFault:
        act = self.cfg.postprocess.activation
        hint = (
            'the model outputs logits: set [postprocess] activation = "softmax" (one class) or "sigmoid" (several)'
            if act == "none"
            else f"activation {act!r} cannot give such scores: the output is not what the classifier expects"
        )
        return GuardFault(
            "output_out_of_range",
            f"classification scores span [{lo:.4g}, {hi:.4g}] after activation {act!r}, outside [0, 1]: {hint}; "
            "the result was not published",
            {"min": round(lo, 6), "max": round(hi, 6), "activation": act},
        )

    def _skipped_row(self, frame: Frame) -> Skipped:
        values = frame.values if frame.values is not None else np.empty(0)
        names = self.pre.features
        missing = [names[i].name if names else str(i) for i in np.flatnonzero(~np.isfinite(values))]
        why = '[guard] on_input_nan = "skip"' if self.cfg.guard.on_input_nan == "skip" else 'its impute = "skip"'
        return Skipped(
            "input_nan",
            f"{frame.source}: feature {', '.join(missing) or '?'} missing; the row was skipped ({why}); "
            "set an impute value to keep such rows",
            {"source": frame.source, "features": missing},
        )

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
        return self.process(frame, stateful=False)
