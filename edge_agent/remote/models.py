"""Model files named by an update: a file under `remote.model_dir`, or an http(s) URL pinned
by `model.sha256` (downloaded into model_dir under its hash). Nothing else: no `file:`/`ftp:`
URLs, no path that leaves model_dir (`..`, an absolute path elsewhere, a symlink pointing out).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.remote.document import UpdateRejectedError

FILE_KEYS = ("path", "fallback_path", "labels")


@dataclass(frozen=True)
class Download:
    key: str
    url: str
    sha256: str
    dest: Path


def inside(model_dir: Path, value: str, key: str) -> Path:
    """`value` (relative to model_dir, or absolute) as a real path inside model_dir, naming a file."""
    root = model_dir.resolve()
    candidate = Path(value) if Path(value).is_absolute() else root / value
    if "\x00" in value:
        raise UpdateRejectedError(key, "holds a NUL character")
    real = Path(os.path.realpath(candidate))
    if real != root and root not in real.parents:
        lexical = Path(os.path.normpath(candidate))
        why = "a symlink pointing" if lexical == root or root in lexical.parents else "a path"
        raise UpdateRejectedError(key, f"{value!r} is {why} outside remote.model_dir ({root})")
    if not real.is_file():
        raise UpdateRejectedError(key, f"{value!r}: no such file in remote.model_dir ({root})")
    return real


def plan_model_files(changes: dict[str, Any], model_dir: Path) -> tuple[dict[str, Any], list[Download]]:
    """The update's model file keys made into real local paths, and what must be downloaded first."""
    model = changes.get("model")
    if not isinstance(model, dict):
        return changes, []
    out = copy.deepcopy(changes)
    downloads: list[Download] = []
    sha = model.get("sha256")
    for k in FILE_KEYS:
        if k not in model or (model[k] is None and k != "path"):
            continue
        key, value = f"model.{k}", model[k]
        if not isinstance(value, str) or not value:
            raise UpdateRejectedError(key, "must be a file name under remote.model_dir or an http(s):// URL")
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https"):
            if k != "path":
                raise UpdateRejectedError(key, "only model.path may be a URL (model.sha256 pins it)")
            if not isinstance(sha, str):
                raise UpdateRejectedError(
                    "model.sha256", "required with a model URL: the download is checked against it"
                )
            dest = model_dir.resolve() / f"{sha.lower()}.tflite"
            downloads.append(Download(key, value, sha.lower(), dest))
            out["model"][k] = str(dest)
        elif len(scheme) > 1:  # "c:" would be a drive letter, not a scheme, elsewhere
            raise UpdateRejectedError(
                key, f"{scheme}: URLs are refused: give a file under remote.model_dir or an http(s):// URL"
            )
        else:
            out["model"][k] = str(inside(model_dir, value, key))
    if "path" in model and not isinstance(sha, str):
        raise UpdateRejectedError(
            "model.sha256", "required when model.path changes: the new file is checked against it"
        )
    return out, downloads
