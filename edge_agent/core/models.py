"""The model supervisor: the only place that builds a pipeline, always off the loop.

A model is loaded in a fresh interpreter and self-tested in a thread (`BackgroundBuild`): loading
can take seconds, and an accelerator in trouble can hang in its delegate's initialisation, while
the loop must go on serving the broker and the watchdog. What a build was for decides what its
result leads to:
- `load`: the configured model at start, and again every `model.retry_interval_s` (or at once
  when the file appears or changes) while none runs;
- `cpu`: the CPU model after the Edge TPU failed `delegate_lost_after` times in a row;
- `tpu`: the Edge TPU again, every `edgetpu_retry_s` while on the CPU because of it;
- `reload` / `fallback`: the guard's action after persistent faults.
The swap itself happens between two frames: the lane is told first (the frame in flight on the
old pipeline is concluded or dropped), then the old pipeline is closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent.accelerator import AcceleratorWatch
from edge_agent.background import BackgroundBuild
from edge_agent.config import AgentConfig, ModelConfig
from edge_agent.core.retry import Backoff, RetrySchedule
from edge_agent.errors import ModelError
from edge_agent.pipeline import Fault, Inference, Outcome, Pipeline, Skipped
from edge_agent.runtime.worker import BackendFactory

log = logging.getLogger("edge_agent.agent")

Purpose = Literal["load", "cpu", "tpu", "reload", "fallback"]
# how a self-test outcome gates a build: reported (the configured model runs whatever its
# self-test said: the guard reports every frame), no fault allowed, or an inference required
Gate = Literal["report", "no_fault", "pass"]
Builder = Callable[["AgentConfig", "ModelConfig | None", Gate], "Built"]
# (old, new): the lane lets go of the old pipeline (its frame in flight, if any, is dropped)
OnSwap = Callable[[Pipeline | None, Pipeline | None], None]
RaiseEvent = Callable[..., None]


@dataclass(frozen=True)
class ModelStamp:
    """Enough of a file's identity to notice that it was replaced."""

    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: str) -> ModelStamp | None:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class Built:
    pipeline: Pipeline
    outcome: Outcome


@dataclass(frozen=True)
class Job:
    """A build in progress and what it is for."""

    purpose: Purpose
    cfg: AgentConfig  # the running config it was started for: a stale build is thrown away
    build: BackgroundBuild[Built]
    note: str = ""  # for reload/fallback: the guard's reason; for cpu: the failed model's name
    faults: int = 0


def build_pipeline(
    cfg: AgentConfig,
    model_cfg: ModelConfig | None = None,
    *,
    gate: Gate,
    backend_factory: BackendFactory | None = None,
) -> Built:
    """Load and self-test; a failure closes what was built and raises ModelError."""
    pipeline = Pipeline.load(cfg, model_cfg, backend_factory=backend_factory)
    try:
        outcome = pipeline.selftest()
    except ModelError:
        pipeline.close()
        raise
    refused = (gate == "pass" and not isinstance(outcome, Inference)) or (
        gate == "no_fault" and isinstance(outcome, Fault)
    )
    if refused:
        pipeline.close()
        if isinstance(outcome, Fault):
            why = f"{outcome.fault.kind}: {outcome.fault.message}"
        else:
            why = outcome.message if isinstance(outcome, Skipped) else "no inference"
        raise ModelError(f"the self-test did not pass the guard ({why})", reason="selftest_failed")
    return Built(pipeline, outcome)


def detail_of(p: Pipeline) -> dict[str, Any]:
    return {"model": {"name": p.model.name, "sha256": p.model.file.sha256, "delegate": p.model.delegate}}


class ModelSupervisor:
    def __init__(
        self,
        cfg: AgentConfig,
        raise_event: RaiseEvent,
        *,
        settle: Callable[[], None],
        on_swap: OnSwap,
        backend_factory: BackendFactory | None = None,
        builder: Builder | None = None,
    ) -> None:
        self.cfg = cfg
        self._raise = raise_event
        self._settle = settle  # the lane concludes its frame in flight
        self._on_swap = on_swap
        self.backend_factory = backend_factory
        self._builder = builder  # tests build fakes; by default `build_pipeline`
        self.pipeline: Pipeline | None = None
        self.selftest_ok = False  # a self-test inference (or a real frame) passed the guard
        self._stamp: ModelStamp | None = None
        self._retry = RetrySchedule(Backoff.fixed(cfg.model.retry_interval_s))
        self._job: Job | None = None
        self._first = True  # no load has finished yet
        # the guard's reload or fallback is being built: the faulty model takes no more frames
        self.holding = False
        self.accel = AcceleratorWatch(lose_after=cfg.model.delegate_lost_after, retry_s=cfg.model.edgetpu_retry_s)
        self.tpu_wanted = False  # on the CPU because the Edge TPU failed or was missing: retry it

    # ---- building -------------------------------------------------------------------------
    def build(self, cfg: AgentConfig, model_cfg: ModelConfig | None = None, *, gate: Gate) -> Built:
        """Load and self-test (in the caller's thread: a BackgroundBuild's, never the loop's)."""
        if self._builder is not None:
            return self._builder(cfg, model_cfg, gate)
        return build_pipeline(cfg, model_cfg, gate=gate, backend_factory=self.backend_factory)

    def _start(
        self, purpose: Purpose, model_cfg: ModelConfig | None, gate: Gate, note: str = "", faults: int = 0
    ) -> None:
        cfg = self.cfg
        build = BackgroundBuild(lambda: self.build(cfg, model_cfg, gate=gate), name=f"model-{purpose}", tag=purpose)
        self._job = Job(purpose, cfg, build, note, faults)

    @property
    def building(self) -> bool:
        return self._job is not None

    @property
    def ready(self) -> bool:
        """A pipeline that may take frames."""
        return self.pipeline is not None and not self.holding

    @property
    def starting(self) -> bool:
        """The first load has not finished yet: the agent does not know whether it has a model."""
        return self._first and self.pipeline is None

    # ---- swapping -------------------------------------------------------------------------
    def swap(self, new: Pipeline | None, *, complete: bool, close_old: bool = True) -> None:
        """Make `new` the running pipeline between two frames; the old one is closed unless kept
        (a model on probation keeps the previous one for a rollback)."""
        if complete:
            self._settle()  # first: concluding that frame may itself swap (a failure, a rollback)
        old, self.pipeline = self.pipeline, new
        self._on_swap(old, new)  # the lane lets go of the old one (before it is closed); the status names the new
        if close_old and old is not None and old is not new:
            old.close()

    def adopt(self, cfg: AgentConfig, pipeline: Pipeline | None, *, close_old: bool = True) -> None:
        """The config controller's new config and pipeline (built and self-tested already)."""
        if pipeline is not self.pipeline:
            self.swap(pipeline, complete=True, close_old=close_old)
            if pipeline is not None:
                self._stamp = ModelStamp.of(cfg.model.path)
        self.cfg = cfg
        self.accel = AcceleratorWatch(lose_after=cfg.model.delegate_lost_after, retry_s=cfg.model.edgetpu_retry_s)
        self.tpu_wanted = False
        self._retry = RetrySchedule(Backoff.fixed(cfg.model.retry_interval_s))

    def detail(self) -> dict[str, Any]:
        """The running model, for an event's detail."""
        return detail_of(self.pipeline) if self.pipeline is not None else {}

    # ---- between two frames -----------------------------------------------------------------
    def housekeeping(self, now: float) -> None:
        job = self._job
        if job is not None:
            if job.build.done():
                self._job = None
                self._first = False
                self._finish(job, now)
            return
        if self.pipeline is None:
            stamp = ModelStamp.of(self.cfg.model.path)
            # retry at the interval, or at once when the file appears or changes
            if self._retry.due(now) or stamp != self._stamp:
                self._stamp = stamp
                self._retry.failed(now)  # the next try waits the interval, whatever this one gives
                self._start("load", None, "report")
        elif self.tpu_wanted and self.accel.retry_due(now):
            model = self.cfg.model.model_copy(update={"on_delegate_error": "fail"})
            self._start("tpu", model, "pass")

    def _finish(self, job: Job, now: float) -> None:
        if job.purpose in ("reload", "fallback"):
            self.holding = False
        try:
            built = job.build.result()
        except Exception as err:  # noqa: BLE001 - whatever failed, the agent goes on
            self._failed(job, err if isinstance(err, ModelError) else ModelError(str(err), reason="build_failed"), now)
            return
        if job.cfg is not self.cfg:  # the config changed meanwhile: not wanted any more
            built.pipeline.close()
            self._retry.now()
            return
        {
            "load": self._loaded,
            "cpu": self._on_cpu,
            "tpu": self._back_on_tpu,
            "reload": self._renewed,
            "fallback": self._renewed,
        }[job.purpose](job, built, now)

    def _failed(self, job: Job, err: ModelError, now: float) -> None:
        m = self.cfg.model
        if job.purpose == "load":
            self._raise(
                "model_error",
                "error",
                f"{err} (retrying every {m.retry_interval_s:g} s)",
                {"path": m.path, "reason": err.reason},
            )
        elif job.purpose == "cpu":
            self._raise(
                "delegate_lost",
                "critical",
                f"the Edge TPU failed {job.faults} times in a row ({job.note}) and the CPU model cannot run "
                f"either: {err}; retrying every {m.retry_interval_s:g} s",
                {"failures": job.faults, "reason": job.note},
            )
        elif job.purpose == "tpu":
            self.accel.on_cpu(now)
            log.info("the Edge TPU is still unusable (%s); next try in %g s", err, self.accel.retry_s)
        else:
            self._raise(
                "model_error", "error", f"{job.purpose} after {job.faults} consecutive faulty frames failed: {err}"
            )

    def _loaded(self, job: Job, built: Built, now: float) -> None:
        pipeline, outcome = built.pipeline, built.outcome
        for w in pipeline.warnings:
            log.warning("%s", w)
        # systemd hears READY only after a self-test inference passed the guard
        self.selftest_ok = isinstance(outcome, Inference)
        if isinstance(outcome, Fault):
            f = outcome.fault
            self._raise(f.kind, "error", f"self-test inference: {f.message}", f.detail)
        self.swap(pipeline, complete=True)
        m = self.cfg.model
        self.tpu_wanted = m.delegate == "edgetpu" and pipeline.model.delegate == "cpu"
        if self.tpu_wanted:
            self.accel.on_cpu(now)
            self._raise(
                "delegate_unavailable",
                "error",
                f"{'; '.join(pipeline.model.notes) or 'the Edge TPU is unavailable'}: running {pipeline.model.name} "
                f"on the CPU, retrying the Edge TPU every {m.edgetpu_retry_s:g} s",
                {"device": m.edgetpu_device or "any", **self.detail()},
            )
        mod = pipeline.model
        log.info(
            "model %s loaded (%s, sha256 %s, interpreter %s %s, %d threads)",
            mod.name,
            mod.delegate,
            mod.file.sha256[:12],
            mod.backend.name,
            mod.backend.version,
            mod.threads,
        )

    # ---- the Edge TPU: lost, and found again --------------------------------------------------
    def cpu_model_config(self) -> ModelConfig:
        m = self.cfg.model
        if m.fallback_path:  # the pin names the primary model
            return m.model_copy(
                update={"path": m.fallback_path, "delegate": "cpu", "edgetpu_device": None, "sha256": None}
            )
        return m.model_copy(update={"delegate": "cpu", "edgetpu_device": None})

    def inference_ok(self) -> None:
        self.accel.success()

    def inference_failed(self, err: ModelError) -> bool:
        """A failed invoke; True when it made the supervisor leave the Edge TPU (the frame is then
        the accelerator's fault, not the model's)."""
        p = self.pipeline
        if p is None or p.model.delegate != "edgetpu" or not self.accel.failure():
            return False
        n, old = self.accel.failures, p.model.name
        log.warning("the Edge TPU failed %d times in a row (last: %s): building the CPU model", n, err.reason)
        self.swap(None, complete=False)
        self._cancel_job()
        self._start("cpu", self.cpu_model_config(), "report", note=f"last: {err.reason}; was {old}", faults=n)
        return True

    def _on_cpu(self, job: Job, built: Built, now: float) -> None:
        pipeline = built.pipeline
        m = self.cfg.model
        reason, _, old = job.note.partition("; was ")
        # the event first: a status naming the CPU then follows it
        self._raise(
            "delegate_lost",
            "error",
            f"the Edge TPU failed {job.faults} times in a row ({reason}): switched from {old} to the CPU model "
            f"{pipeline.model.name}; retrying the Edge TPU every {m.edgetpu_retry_s:g} s",
            {"failures": job.faults, "reason": reason.removeprefix("last: "), "now": detail_of(pipeline)["model"]},
        )
        self.swap(pipeline, complete=True)
        self.tpu_wanted = True
        self.accel.on_cpu(now)

    def _back_on_tpu(self, job: Job, built: Built, now: float) -> None:
        if not self.tpu_wanted or self.pipeline is None:
            built.pipeline.close()  # the model is gone meanwhile: not wanted any more
            return
        old = self.pipeline.model.name
        self._raise(
            "delegate_restored",
            "info",
            f"the Edge TPU works again: switched from the CPU model {old} back to {built.pipeline.model.name}",
            detail_of(built.pipeline),
        )
        self.swap(built.pipeline, complete=True)
        self.tpu_wanted = False
        self.accel.success()

    # ---- the guard's action after persistent faults -----------------------------------------
    def renew(self, action: Literal["reload", "fallback"], faults: int) -> None:
        """Reload the model in a fresh interpreter, or switch to the fallback model (off the loop;
        frames go on meanwhile). One at a time: a second request while building is ignored."""
        if self.pipeline is None or self._job is not None:
            return
        m = self.cfg.model
        if action == "fallback" and not m.fallback_path:
            self._raise(
                "model_error",
                "error",
                f"{faults} consecutive faulty frames, and guard.on_persistent_fault = "
                '"fallback" but model.fallback_path is not set: reloading the model instead',
            )
            action = "reload"
        model_cfg = m
        if action == "fallback":
            assert m.fallback_path is not None
            model_cfg = m.model_copy(update={"path": m.fallback_path, "delegate": "cpu", "sha256": None})
        self.holding = True
        self._start(action, model_cfg, "report", note=self.pipeline.model.name, faults=faults)

    def _renewed(self, job: Job, built: Built, now: float) -> None:
        pipeline, old = built.pipeline, job.note
        n = job.faults
        if job.purpose == "fallback":
            kind, what = "model_fallback", f"switched from {old} to the fallback model {pipeline.model.name}"
        else:
            kind, what = "model_reloaded", f"reloaded {old} in a fresh interpreter"
        self._raise(kind, "warning", f"{n} consecutive faulty frames: {what}", detail_of(pipeline))
        self.swap(pipeline, complete=False)
        self.tpu_wanted = False  # chosen by the guard, not forced by the accelerator: no retry

    # ---- the stop ---------------------------------------------------------------------------
    def _cancel_job(self) -> None:
        job, self._job = self._job, None
        if job is not None and job.build.wait(5.0):
            with contextlib.suppress(Exception):
                job.build.result().pipeline.close()

    def close(self) -> None:
        self._cancel_job()
        self.swap(None, complete=True)

    def retry_now(self) -> None:
        self._retry.now()
        self._stamp = None
