"""Downloading a model: to a temporary file, with a size limit and a timeout, checked against
its sha256 before it takes its final name (`os.replace`, atomic)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_agent.remote.document import UpdateRejectedError

CHUNK = 256 * 1024


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may not lead to file:, ftp: or anything but http(s)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:  # noqa: PLR0917 - urllib's signature
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirect to a non-http(s) URL refused: {newurl[:100]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, *, max_bytes: int, timeout_s: float) -> None:
    """`dest` holds the file with that hash afterwards, or UpdateRejectedError("model.path", why) is raised."""
    if dest.is_file() and sha256_of(dest) == sha256:
        return  # fetched before (an update applied again, or a rollback and forward)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    h = hashlib.sha256()
    size = 0
    try:
        with opener.open(url, timeout=timeout_s) as resp, tmp.open("wb") as out:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UpdateRejectedError("model.path", f"{url}: {int(declared)} bytes exceeds remote.max_model_mb")
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                size += len(block)
                if size > max_bytes:
                    raise UpdateRejectedError("model.path", f"{url}: more than {max_bytes} bytes (remote.max_model_mb)")
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha256:
            raise UpdateRejectedError(
                "model.sha256", f"the file at {url} has sha256 {h.hexdigest()}, the update pins {sha256}: refused"
            )
        tmp.replace(dest)
    except UpdateRejectedError:
        raise
    except urllib.error.HTTPError as err:
        raise UpdateRejectedError("model.path", f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UpdateRejectedError("model.path", f"{url}: download failed: {reason}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_partial_downloads(model_dir: Path) -> None:
    """Left by a download that a crash or a SIGKILL interrupted."""
    if model_dir.is_dir():
        for p in model_dir.glob(".*.part"):
            with contextlib.suppress(OSError):
                p.unlink()
