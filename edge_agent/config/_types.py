"""Config strings checked for what the code later does with them.

Validation is pure (no file is opened here); but a string that can only fail later, with a
traceback, is refused now with one line: an empty host, a NUL byte in a path (every `open()`
and `stat()` raises ValueError on it), a path longer than the kernel takes, an MQTT topic that
is not one. Every string of a config is also checked for NUL and control characters before
validation (see `raw_problems`), so these types add what each kind of value needs beyond that.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_TEXT_CHARS = 1024  # a name, a label, a user name: generous
MAX_TOPIC_BYTES = 65535  # MQTT's limit for a topic (and a client id, a user name)
MAX_DEPTH = 8  # nesting of tables and arrays in a config (the deepest real key is 3 levels)
# a host name (RFC 1123, with `_` for container names) or an IP literal (IPv6 with a zone)
_HOST = re.compile(r"^[A-Za-z0-9_.:%\-\[\]]{1,253}$")
# C0 control characters but tab (a CSV delimiter), and DEL: a NUL breaks every system call, a
# newline would split the one-line errors that quote the value; no path, topic or name needs them
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _path(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    if len(v) > MAX_PATH_CHARS:
        raise ValueError(f"is {len(v)} characters long, more than the {MAX_PATH_CHARS} a path may have")
    return v


def _host(v: str) -> str:
    if not v:
        raise ValueError('must not be empty (the broker\'s name or address, e.g. "localhost")')
    if not _HOST.match(v):
        shown = v if len(v) <= 60 else v[:57] + "..."
        raise ValueError(f"must be a host name or an IP address (letters, digits, '.', '-', ':'), got {shown!r}")
    return v


def _text(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    if len(v) > MAX_TEXT_CHARS:
        raise ValueError(f"is {len(v)} characters long, more than the {MAX_TEXT_CHARS} allowed")
    return v


def _mqtt_string(v: str) -> str:
    if len(v.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise ValueError(f"is longer than the {MAX_TOPIC_BYTES} bytes MQTT allows")
    return v


# A path the agent opens, stats or creates: non-empty, within PATH_MAX.
PathStr = Annotated[str, AfterValidator(_path)]
# The broker's host name or address.
HostStr = Annotated[str, AfterValidator(_host)]
# A name shown to people or matched against labels: not blank, bounded.
TextStr = Annotated[str, AfterValidator(_text)]
# A string sent in an MQTT packet (a user name, a client id): within MQTT's length limit.
MqttStr = Annotated[str, AfterValidator(_mqtt_string)]


def _where(keys: tuple[str | int, ...]) -> str:
    return ".".join(str(k) for k in keys) or "config"


def raw_problems(raw: Any, *, max_depth: int = MAX_DEPTH) -> list[str]:
    """What no key of a config may hold, one line each: nesting beyond `max_depth`, strings with
    NUL or other control characters. Run on the raw document, before validation and before
    paths are resolved (Path.expanduser raises on a NUL)."""
    problems: list[str] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(raw, ())]
    while stack:
        node, keys = stack.pop()
        if isinstance(node, str):
            bad = _CONTROL.search(node)
            if bad is not None:
                what = "a NUL byte" if bad.group() == "\x00" else f"a control character ({bad.group()!r})"
                problems.append(f"{_where(keys)}: holds {what} at position {bad.start()}")
            continue
        if isinstance(node, dict):
            items: list[tuple[str | int, Any]] = [(str(k), v) for k, v in node.items()]
            for k, _ in items:
                if isinstance(k, str) and _CONTROL.search(k):
                    problems.append(f"{_where(keys)}: a key holds a control character: {k[:60]!r}")
        elif isinstance(node, list | tuple):
            items = list(enumerate(node))
        else:
            continue
        if len(keys) >= max_depth:
            problems.append(f"{_where(keys)}: nested more than {max_depth} levels deep")
            continue
        stack.extend((v, (*keys, k)) for k, v in reversed(items))
    return problems
