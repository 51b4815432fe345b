"""`state_dir/applied.json`: the applied overlay and the highest version accepted, written
atomically (temporary file, fsync, rename, fsync of the folder), so that a crash at any moment
leaves the old or the new content, never a mix."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.bounded import MAX_CONFIG_BYTES, FileReadError, describe_kind, read_bytes_bounded
from edge_agent.bounded_json import JsonLimitError, loads_bounded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    version: int = 0  # the highest version accepted: a lower or equal one is never applied again
    overlay: dict[str, Any] = field(default_factory=dict)
    applied_at: float = 0.0
    note: str = ""


def state_dir_problem(state_dir: str | os.PathLike[str]) -> str | None:
    """Why `state_dir` cannot hold the agent's state, in one line; None when it can (or does not
    exist yet: it is created on first use). Checked at start, not in config validation, which
    never touches the disk."""
    try:
        st = Path(state_dir).stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"device.state_dir {state_dir} cannot be used: {err.strerror or err}"
    if not stat.S_ISDIR(st.st_mode):
        return (
            f"device.state_dir {state_dir} is {describe_kind(st.st_mode)}, not a directory: the outbox, the "
            "applied updates and the discovery state cannot be kept (messages wait in memory)"
        )
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return (
            f"device.state_dir {state_dir} is not writable by this user: the outbox and applied updates cannot be kept"
        )
    return None


class AppliedStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "applied.json"

    def load(self) -> tuple[Applied, str | None]:
        """The stored state, and a problem to report when the file could not be used."""
        try:
            raw = loads_bounded(
                read_bytes_bounded(self.path, what="the applied-update record", max_bytes=MAX_CONFIG_BYTES)
            )
        except FileNotFoundError:
            return Applied(), None
        except FileReadError as err:  # not a regular file, too large
            return Applied(), f"{err}; running the file config"
        except OSError as err:  # state_dir not a folder (NotADirectoryError), unreadable
            return Applied(), f"{self.path} cannot be read ({err.strerror or err}); running the file config"
        except JsonLimitError as err:
            return Applied(), f"{self.path} {err}; running the file config"
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
