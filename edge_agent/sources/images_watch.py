"""`images` with `images_watch = true`: a folder a camera keeps writing JPEG/PNG/BMP files into.

The folder is polled (`os.scandir` every POLL_S; portable, no extra dependency, and cheap for
the few hundred files such a folder holds). A file is taken once it is complete:

- unchanged in size and mtime between two polls, and ending in its format's end marker
  (JPEG EOI, PNG IEND, BMP's declared size), or
- unchanged for `images_settle_s` without one: a writer that died halfway, a zero-byte file,
  a non-image with an image suffix. It is taken anyway and reported as a `SourceProblem`.

Names starting with "." and other suffixes are ignored, so a writer that renames a finished
file into place ("img.jpg.part" → "img.jpg") is never read half-written. A file is taken
once per version: the (size, mtime) taken is remembered per name, so a camera overwriting
"latest.jpg" is read again after each write; names are forgotten when their file leaves the
folder, so memory follows the folder's size, not the run's length. `images_after` deletes
or moves a file once taken (decoded or not); with "keep", a restarted agent reads the folder
again from the start.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.source import DEFAULT_MAX_PIXELS, ImagesOptions
from edge_agent.errors import SourceError
from edge_agent.sources.base import (
    MAX_WAIT_S,
    NO_FRAME_YET,
    Frame,
    NoFrameYet,
    SourceProblem,
    Stamp,
    frame_from_pixels,
)
from edge_agent.sources.images import IMAGE_SUFFIXES, TAIL_BYTES, decode_image_or_reason, incomplete_reason

POLL_S = 0.2


@dataclass(frozen=True)
class _Version:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Pending:
    version: _Version
    since: float  # monotonic time this version was first seen


def _has_end_marker(path: Path, size: int) -> bool:
    """Whether the file ends like a complete image (False if it cannot be read now)."""
    try:
        # O_NONBLOCK: a FIFO swapped in under an image's name cannot block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, 16, 0)
        tail = os.pread(fd, TAIL_BYTES, max(size - TAIL_BYTES, 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    # a format we cannot check (not an image at all) has no marker to wait for: the settle time decides
    return bool(head) and incomplete_reason(head, tail, size) is None and _known_format(head)


def _known_format(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"))


class WatchedFolderSource:
    def __init__(self, opts: ImagesOptions, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._folder = Path(opts.path).expanduser()
        if not self._folder.is_dir():
            raise SourceError(f"source.path: {self._folder} is not a folder (images_watch = true needs one)")
        self.name = f"images:{self._folder}"
        self._after = opts.after
        self._move_to: Path | None = None
        if opts.after == "move":
            assert opts.move_to is not None  # ImagesOptions asks for it with after = "move"
            self._move_to = Path(opts.move_to).expanduser()
            if self._move_to.resolve() == self._folder.resolve():
                raise SourceError("source.images_move_to: must not be the watched folder itself")
            try:
                self._move_to.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise SourceError(
                    f"source.images_move_to: cannot create {self._move_to}: {err.strerror or err}"
                ) from None
        self._settle = opts.settle_s
        self._max_pixels = max_pixels
        self._stamp = Stamp()
        self._taken: dict[str, _Version] = {}  # name → the version already taken
        self._pending: dict[str, _Pending] = {}  # name → a version not yet complete
        self._ready: deque[str] = deque()
        self._problems: deque[SourceProblem] = deque()
        self._next_scan = 0.0

    # ---- the folder --------------------------------------------------------------------------
    def _list(self) -> dict[str, _Version]:
        try:
            entries = list(os.scandir(self._folder))
        except OSError as err:
            # the folder itself is gone or unreadable: the agent reopens the source later
            raise SourceError(f"source.path: cannot list {self._folder}: {err.strerror or err}") from None
        present: dict[str, _Version] = {}
        for e in entries:
            if e.name.startswith(".") or Path(e.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except OSError:
                continue  # gone between the listing and the stat
            present[e.name] = _Version(st.st_size, st.st_mtime_ns)
        return present

    def _scan(self, now: float) -> None:
        present = self._list()
        # forget what left the folder: memory follows the folder, not the length of the run
        self._taken = {n: v for n, v in self._taken.items() if n in present}
        pending = {n: p for n, p in self._pending.items() if n in present}
        complete: list[tuple[str, _Version]] = []
        for name, version in present.items():
            if self._taken.get(name) == version:
                continue
            seen = pending.get(name)
            if seen is None or seen.version != version:
                pending[name] = _Pending(version, now)  # new, or still being written
                continue
            if now - seen.since >= self._settle or (
                version.size > 0 and _has_end_marker(self._folder / name, version.size)
            ):
                complete.append((name, version))
        for name, version in sorted(complete):
            del pending[name]
            self._taken[name] = version
            self._ready.append(name)
        self._pending = pending

    # ---- after a file is taken ---------------------------------------------------------------
    def _dispose(self, path: Path) -> None:
        try:
            if self._after == "delete":
                path.unlink(missing_ok=True)
            elif self._after == "move" and self._move_to is not None and path.exists():
                # shutil.move: os.rename, or copy and delete when the target is on another disk
                shutil.move(path, self._move_to / path.name)
        except OSError as err:
            # the file stays; it is remembered as taken, so it is not read again
            self._problems.append(
                SourceProblem(path.name, f"taken but could not be {self._after}d: {err.strerror or err}")
            )

    # ---- the source --------------------------------------------------------------------------
    def read(self) -> Frame | SourceProblem | NoFrameYet | None:
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            if self._problems:
                return self._problems.popleft()
            if self._ready:
                path = self._folder / self._ready.popleft()
                img = decode_image_or_reason(path, self._max_pixels)
                self._dispose(path)
                if isinstance(img, str):
                    return SourceProblem(path.name, img)
                return frame_from_pixels(self._stamp, path.name, img, "bgr")
            now = time.monotonic()
            if now >= self._next_scan:
                self._scan(now)
                self._next_scan = now + POLL_S
                continue
            if now >= deadline:
                return NO_FRAME_YET
            time.sleep(min(self._next_scan, deadline) - now)

    def release(self, frame: Frame) -> None:
        """Nothing to give back: each decoded image is its own array."""

    def close(self) -> None:
        self._ready.clear()
        self._pending.clear()
        self._taken.clear()
