"""Checking an update against the running state, and keeping what was applied.

`RemoteUpdates.check` runs every rule of SPEC's "Remote updates" that needs no model loaded:
the signature, the version, the keys (known, allowed), the model files (under model_dir or a
pinned URL) and the validation of the merged config. What it returns is built (downloads, a
fresh interpreter, a self-test) off the agent's loop and swapped in between two frames; only
then is it stored (`commit`). A rejection changes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.remote.document import UpdateRejectedError, parse_update
from edge_agent.remote.models import Download, plan_model_files
from edge_agent.remote.overlay import build_config, check_allowed, leaf_keys, merge
from edge_agent.remote.store import Applied, AppliedStore, state_dir_problem
from edge_agent.secrets import read_secret

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
# the sections whose change needs a new pipeline (a fresh interpreter, a new plan, a new guard)
PIPELINE_SECTIONS = ("model", "preprocess", "postprocess", "guard")


@dataclass(frozen=True)
class Prepared:
    """A checked update: the overlay to store and the config it makes."""

    version: int
    overlay: dict[str, Any]
    cfg: AgentConfig
    downloads: tuple[Download, ...]
    keys: tuple[str, ...]

    def rebuilds_pipeline(self, running: AgentConfig) -> bool:
        return any(getattr(self.cfg, s) != getattr(running, s) for s in PIPELINE_SECTIONS)

    def changes_model(self, running: AgentConfig) -> bool:
        return self.cfg.model != running.model


@dataclass(frozen=True)
class AlreadyApplied:
    version: int


@dataclass(frozen=True)
class StartupProblem:
    """Something about the stored updates to raise as an event at start: `kind` says what it is.

    `storage_error`: the state_dir or its record of applied updates cannot be used (no update was
    rejected: the disk or the folder is the problem). `config_rejected`: an update applied before
    no longer fits the config file, and the file config runs instead."""

    kind: str
    message: str


class RemoteUpdates:
    def __init__(self, file_cfg: AgentConfig) -> None:
        self.file_cfg = file_cfg
        self.store = AppliedStore(file_cfg.device.state_dir)
        # a state_dir that is no folder is said as such, not as an unreadable record inside it
        self.state_dir_problem = state_dir_problem(file_cfg.device.state_dir)
        if self.state_dir_problem is not None:
            self.applied, self.load_problem = Applied(), None
        else:
            self.applied, self.load_problem = self.store.load()

    @property
    def version(self) -> int:
        return self.applied.version

    @property
    def model_dir(self) -> Path:
        r = self.file_cfg.remote
        return Path(r.model_dir) if r.model_dir else Path(self.file_cfg.device.state_dir) / "models"

    def effective(self) -> tuple[AgentConfig, StartupProblem | None]:
        """The file config with the stored overlay; the file config alone (and why) if the state_dir
        or its record cannot be used, or if the overlay no longer fits the file (the file changed
        since, a model file vanished)."""
        if self.state_dir_problem is not None:
            return self.file_cfg, StartupProblem("storage_error", self.state_dir_problem)
        if self.load_problem is not None:
            return self.file_cfg, StartupProblem("storage_error", self.load_problem)
        if not self.applied.overlay:
            return self.file_cfg, None
        try:
            return build_config(self.file_cfg, self.applied.overlay), None
        except UpdateRejectedError as err:
            return self.file_cfg, StartupProblem(
                "config_rejected",
                f"the applied update {self.applied.version} no longer fits the config file ({err}): "
                "running the file config",
            )

    def _key(self) -> bytes:
        r = self.file_cfg.remote
        if not r.hmac_key_file:
            raise UpdateRejectedError("remote", "remote.hmac_key_file is not set")
        try:
            key = read_secret(r.hmac_key_file).encode("utf-8")
        except ConfigError as err:
            raise UpdateRejectedError("remote", f"the update key cannot be read: {err}") from None
        if len(key) < MIN_KEY_BYTES:
            raise UpdateRejectedError("remote", f"the update key is shorter than {MIN_KEY_BYTES} bytes: refusing it")
        return key

    def check(self, payload: Any) -> Prepared | AlreadyApplied:
        """Raise UpdateRejectedError(key, why) for anything SPEC refuses."""
        doc = parse_update(payload, self._key())
        if doc.version == self.applied.version and self.applied.note:
            raise UpdateRejectedError(
                "version", f"{self.applied.note}: send the update again with a version above {doc.version}"
            )
        if doc.version == self.applied.version:
            return AlreadyApplied(doc.version)
        if doc.version < self.applied.version:
            raise UpdateRejectedError(
                "version",
                f"{doc.version} is not greater than the running version {self.applied.version} (a replayed update?)",
            )
        keys = leaf_keys(doc.config)
        check_allowed(keys, self.file_cfg.remote.allowed)
        changes, downloads = plan_model_files(doc.config, self.model_dir)
        overlay = merge(self.applied.overlay, changes)
        cfg = build_config(self.file_cfg, overlay)
        return Prepared(doc.version, overlay, cfg, tuple(downloads), tuple(keys))

    def commit(self, prepared: Prepared) -> None:
        self.applied = Applied(prepared.version, prepared.overlay, time.time())
        self.store.save(self.applied)

    def roll_back(self, version: int, overlay: dict[str, Any], why: str) -> None:
        """Back to `overlay`, keeping `version` as the high-water mark: the update is not taken again."""
        self.applied = Applied(version, overlay, time.time(), f"update {version} rolled back: {why}")
        self.store.save(self.applied)
