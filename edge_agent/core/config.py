"""The config controller: SIGHUP, `cmd/reload` and signed remote updates through one path,
validate → build (off the loop) → swap → answer, with probation and rollback after a model
update.

Nothing changes until the new config is valid and its pipeline is built and self-tested in a
fresh interpreter; a failure at any step leaves the running config and model as they were and
is answered (`cmd/result`, `config/result`) and raised (`config_rejected`). One change is in
progress at a time: a second request meanwhile is answered "busy".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.background import BackgroundBuild
from edge_agent.config import AgentConfig, load_config
from edge_agent.core.models import ModelSupervisor
from edge_agent.core.publisher import Publisher
from edge_agent.errors import ConfigError, ModelError
from edge_agent.remote.document import UpdateRejectedError
from edge_agent.remote.fetch import download
from edge_agent.remote.overlay import build_config
from edge_agent.remote.probation import Probation
from edge_agent.remote.state import config_state
from edge_agent.remote.updater import AlreadyApplied, Prepared, RemoteUpdates
from edge_agent.service import Notifier

log = logging.getLogger("edge_agent.agent")

RESTART_ONLY = ("mqtt", "device", "homeassistant", "metrics")
# what the agent does to make a config the running one: (config, pipeline, keep the old pipeline)
Adopt = Callable[[AgentConfig, Any, bool], None]
Answer = Callable[[bool, str], None]


@dataclass(frozen=True)
class Reload:
    """A reload in progress: the file's config, the merged one, who asked, how to answer."""

    file_cfg: AgentConfig
    cfg: AgentConfig
    asked_by: str
    answer: Answer | None
    build: BackgroundBuild[Any]


@dataclass(frozen=True)
class Update:
    prepared: Prepared
    build: BackgroundBuild[Any]


class ConfigController:
    def __init__(
        self,
        remote: RemoteUpdates,
        models: ModelSupervisor,
        publisher: Publisher,
        notifier: Notifier,
        adopt: Adopt,
        *,
        config_path: str | None,
    ) -> None:
        self.remote = remote
        self.models = models
        self.publisher = publisher
        self.notifier = notifier
        self._adopt = adopt
        self.config_path = config_path  # re-read on SIGHUP and cmd/reload
        self.cfg = models.cfg
        self.change: Reload | Update | None = None
        self.probation: Probation | None = None

    def state(self) -> dict[str, Any]:
        """The retained config/state payload."""
        return config_state(self.cfg, self.remote.version)

    def _raise(self, *args: Any, **kwargs: Any) -> None:
        self.publisher.raise_event(*args, **kwargs)

    # ---- SIGHUP and cmd/reload -------------------------------------------------------------
    def reload(self, asked_by: str, answer: Answer | None = None) -> None:
        """Re-read the config file (if the agent has one) and the model, off the loop."""
        if self.change is not None:
            self._refuse_reload(asked_by, answer, f"busy: {self._describe_change()}: ask again later")
            return
        try:
            file_cfg, cfg = self._read_file()
        except _RefusedError as err:
            self._refuse_reload(asked_by, answer, str(err))
            return
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        # the model is built again too (a file replaced in place is picked up, a wedged
        # interpreter renewed) and must pass its self-test before the swap
        build = BackgroundBuild(lambda: self.models.build(cfg, gate="no_fault"), name="reload", tag=cfg)
        self.change = Reload(file_cfg, cfg, asked_by, answer, build)

    def _read_file(self) -> tuple[AgentConfig, AgentConfig]:
        if self.config_path is None:
            return self.remote.file_cfg, self.cfg
        try:
            file_cfg = load_config(self.config_path)
        except ConfigError as err:
            raise _RefusedError(
                f"config reload from {self.config_path} failed, keeping the running config: " + "; ".join(err.problems)
            ) from None
        kept = [name for name in RESTART_ONLY if getattr(file_cfg, name) != getattr(self.cfg, name)]
        if kept:
            log.warning(
                "config reload: [%s] changed; that takes a restart, the running values are kept", ", ".join(kept)
            )
            file_cfg = file_cfg.model_copy(update={name: getattr(self.cfg, name) for name in RESTART_ONLY})
        cfg = file_cfg
        if self.remote.applied.overlay:  # the applied remote update stays on top of the new file
            try:
                cfg = build_config(file_cfg, self.remote.applied.overlay)
            except UpdateRejectedError as err:
                raise _RefusedError(
                    f"config reload: the applied update {self.remote.version} does not fit the new file "
                    f"({err}), keeping the running config"
                ) from None
        return file_cfg, cfg

    def _refuse_reload(self, asked_by: str, answer: Answer | None, message: str) -> None:
        self._raise("config_rejected", "warning", f"{asked_by}: {message}", {"reason": "reload_failed"})
        if answer is not None:
            answer(False, message)

    def _finish_reload(self, r: Reload) -> None:
        try:
            built = r.build.result()
        except Exception as err:  # noqa: BLE001 - whatever failed, the running config stays
            what = "keeping the running model" if self.models.pipeline is not None else "no model is running"
            why = str(err) if isinstance(err, ModelError) else f"{type(err).__name__}: {err}"
            self._refuse_reload(r.asked_by, r.answer, f"the model cannot be used, {what} and the running config: {why}")
            self.notifier.send("READY=1")
            return
        self.remote.file_cfg = r.file_cfg
        self.cfg = r.cfg
        self._adopt(r.cfg, built.pipeline, False)
        source = f" from {self.config_path}" if self.config_path is not None else ""
        message = f"config{source} and model {built.pipeline.model.name} reloaded"
        log.info("%s: %s", r.asked_by, message)
        self.notifier.send("READY=1")
        if r.answer is not None:
            r.answer(True, message)

    # ---- remote updates -------------------------------------------------------------------
    def consider_update(self, payload: Any) -> None:
        version = payload.get("version") if isinstance(payload, dict) else None
        if not self.cfg.remote.enabled:
            self.publisher.reject_update(version, "remote updates are disabled on this device (remote.enabled = false)")
            return
        if self.change is not None or self.probation is not None:
            self.publisher.reject_update(version, f"{self._describe_change()}: send this one again later", "version")
            return
        try:
            checked = self.remote.check(payload)
        except UpdateRejectedError as err:
            self.publisher.reject_update(version, err.message, err.key)
            return
        if isinstance(checked, AlreadyApplied):
            self.publisher.answer_update(
                {"version": checked.version, "applied": True, "errors": [], "note": "already applied"}
            )
            return
        running = self.cfg
        log.info("update %d accepted (%s): building it", checked.version, ", ".join(checked.keys))
        build = BackgroundBuild(lambda: self._build_update(checked, running), name=f"update-{checked.version}")
        self.change = Update(checked, build)

    def _describe_change(self) -> str:
        c = self.change
        if isinstance(c, Update):
            return f"update {c.prepared.version} is being applied"
        if isinstance(c, Reload):
            return f"a reload ({c.asked_by}) is under way"
        version = self.probation.version if self.probation is not None else 0
        return f"update {version} is on probation (its first frames are watched)"

    def _build_update(self, prepared: Prepared, running: AgentConfig) -> Any:
        """Off the loop: download, load in a fresh interpreter, self-test. Nothing is swapped here."""
        r = self.remote.file_cfg.remote
        for d in prepared.downloads:
            download(d.url, d.dest, d.sha256, max_bytes=int(r.max_model_mb * 1e6), timeout_s=r.download_timeout_s)
        if not prepared.rebuilds_pipeline(running):
            return None
        try:
            return self.models.build(prepared.cfg, gate="pass").pipeline
        except ModelError as err:
            if err.reason == "selftest_failed":
                raise UpdateRejectedError("model", str(err)) from None
            raise UpdateRejectedError("model", f"the new model cannot be used: {err}") from None

    def _finish_update(self, u: Update) -> None:
        prepared = u.prepared
        try:
            pipeline = u.build.result()
        except UpdateRejectedError as err:
            self.publisher.reject_update(prepared.version, err.message, err.key)
            return
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the running config stays
            self.publisher.reject_update(prepared.version, f"{type(err).__name__}: {err}", "config")
            return
        previous_cfg, previous_overlay = self.cfg, self.remote.applied.overlay
        old_pipeline = self.models.pipeline
        model_changed = prepared.changes_model(previous_cfg) and pipeline is not None
        keep_old = model_changed and old_pipeline is not None
        self.cfg = prepared.cfg
        self._adopt(prepared.cfg, pipeline if pipeline is not None else old_pipeline, keep_old)
        self.remote.commit(prepared)
        if keep_old:
            assert old_pipeline is not None
            r = prepared.cfg.remote
            self.probation = Probation(
                prepared.version,
                r.probation_frames,
                r.rollback_after_faults,
                old_pipeline,
                previous_cfg,
                previous_overlay,
            )
        # the state before the answer: whoever reads the state after it sees the new version
        self.publisher.publish_config_state(self.state())
        self.publisher.answer_update({"version": prepared.version, "applied": True, "errors": []})
        self._raise(
            "config_applied",
            "info",
            f"update {prepared.version} applied ({', '.join(prepared.keys)})",
            {"version": prepared.version, "keys": list(prepared.keys), **self.models.detail()},
        )
        self.publisher.config_state_due = True

    # ---- between two frames -----------------------------------------------------------------
    def housekeeping(self) -> None:
        c = self.change
        if c is None or not c.build.done():
            return
        self.change = None
        if isinstance(c, Reload):
            self._finish_reload(c)
        else:
            self._finish_update(c)

    def watch(self, faulty: bool) -> None:
        """The first frames after a model update: too many faults roll the model back."""
        pb = self.probation
        if pb is None:
            return
        pb.frames += 1
        pb.faults += int(faulty)
        if pb.faults > pb.fault_limit:
            self._roll_back(pb)
        elif pb.frames >= pb.frame_limit:
            self.probation = None
            pb.old_pipeline.close()
            log.info("update %d passed its probation (%d faults in %d frames)", pb.version, pb.faults, pb.frames)

    def _roll_back(self, pb: Probation) -> None:
        self.probation = None
        why = f"{pb.faults} faulty frames in the first {pb.frames} after the model update (limit {pb.fault_limit})"
        new_name = self.models.pipeline.model.name if self.models.pipeline is not None else "?"
        self.cfg = pb.old_cfg
        self._adopt(pb.old_cfg, pb.old_pipeline, False)
        self.remote.roll_back(pb.version, pb.old_overlay, why)
        self.publisher.answer_update(
            {"version": pb.version, "applied": False, "errors": [{"key": "model", "message": f"rolled back: {why}"}]}
        )
        self._raise(
            "model_error",
            "error",
            f"update {pb.version}: {new_name} rolled back to {pb.old_pipeline.model.name}: {why}",
            {"version": pb.version, "reason": "rolled_back", **self.models.detail()},
        )
        self.publisher.config_state_due = True

    def close(self) -> None:
        if self.probation is not None:  # the new model stays (it is stored): the kept one goes
            self.probation.old_pipeline.close()
            self.probation = None
        c, self.change = self.change, None
        if c is not None and c.build.wait(5.0):
            try:
                built = c.build.result()
            except Exception:  # noqa: BLE001 - a build that failed has nothing to close
                return
            pipeline = getattr(built, "pipeline", built)
            if pipeline is not None:
                pipeline.close()


class _RefusedError(Exception):
    """A reload refused before anything was built; str() is the one-line reason."""
