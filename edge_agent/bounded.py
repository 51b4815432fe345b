"""Bounded reads of files named by config or the network, and bounded quoting of what they hold.

A path that comes from a config file or an update may name anything: `/dev/zero` (never ends),
a FIFO (blocks forever), a directory, a 10 GB file. Everything such a path is read through goes
here: regular files only, opened without blocking, read to at most a limit for its kind; what is
wrong is said in one line. Long offending input (a 10 MB CSV header, a 5,000-digit number) is
quoted only in part, so one bad input cannot flood the log or the events.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# limits per kind of file, generous for real use, far below what would hurt a Pi
MAX_CONFIG_BYTES = 1 << 20  # a config file: 1 MiB (the example config is ~20 KB)
MAX_LABELS_BYTES = 16 << 20  # a labels file: 16 MiB (ImageNet's 1,001 labels are ~10 KB)
MAX_SECRET_BYTES = 64 << 10  # a password, token or key file
MAX_QUOTE_CHARS = 120  # how much of an offending input an event or a log line quotes


class FileReadError(OSError):
    """A path that is not a regular file, or a file over its limit; str() is one line."""


def describe_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | Path, *, what: str, max_bytes: int | None = None) -> os.stat_result:
    """stat() the path and refuse anything but a regular file within `max_bytes`."""
    st = Path(path).stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileReadError(f"{what} {path} is {describe_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileReadError(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} allowed")
    return st


def read_bytes_bounded(path: str | Path, *, what: str, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes`.

    Opened with O_NONBLOCK so that a FIFO swapped in after the check cannot block the open, then
    checked again on the open descriptor (the path may have changed between the two); the read
    stops at the limit whatever the size said, so a file that grows meanwhile cannot make it
    unbounded."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    check_regular(path, what=what, max_bytes=max_bytes)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileReadError(f"{what} {path} is {describe_kind(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileReadError(f"{what} {path} is more than the {max_bytes} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_bounded(path: str | Path, *, what: str, max_bytes: int, encoding: str = "utf-8") -> str:
    """`read_bytes_bounded`, decoded; a decoding error names the byte offset."""
    data = read_bytes_bounded(path, what=what, max_bytes=max_bytes)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise FileReadError(f"{what} {path} is not {encoding} text (byte {err.start})") from None


def quote_part(text: str | bytes, limit: int = MAX_QUOTE_CHARS) -> str:
    """`text` on one line, cut to about `limit` characters with how much was left out."""
    if isinstance(text, bytes):
        if len(text) > limit * 4:  # only what can be shown is decoded
            head = text[: limit * 4].decode("utf-8", errors="replace").replace("\n", "\\n")
            return f"{head[:limit]}… ({len(text)} bytes in all)"
        text = text.decode("utf-8", errors="replace")
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}… ({len(flat) - limit} more characters)"
