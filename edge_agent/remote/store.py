"""`state_dir/applied.json`: the applied overlay and the highest version accepted, written
atomically (temporary file, fsync, rename, fsync of the folder), so that a crash at any moment
leaves the old or the new content, never a mix."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    version: int = 0  # the highest version accepted: a lower or equal one is never applied again
    overlay: dict[str, Any] = field(default_factory=dict)
    applied_at: float = 0.0
    note: str = ""


class AppliedStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "applied.json"

    def load(self) -> tuple[Applied, str | None]:
        """The stored state, and a problem to report when the file could not be used."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Applied(), None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return Applied(), f"{self.path} cannot be read ({err}); running the file config"
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("version"), int)
            or isinstance(raw.get("version"), bool)
            or not isinstance(raw.get("overlay"), dict)
        ):
            return Applied(), f"{self.path} is not an applied-update record; running the file config"
        return Applied(
            raw["version"], raw["overlay"], float(raw.get("applied_at", 0.0)), str(raw.get("note", ""))
        ), None

    def save(self, applied: Applied) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        doc = {
            "version": applied.version,
            "overlay": applied.overlay,
            "applied_at": applied.applied_at or time.time(),
            "note": applied.note,
        }
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename itself is durable once the folder is synced
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
