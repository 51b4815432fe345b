"""The update document: `{"version": int, "config": {partial config}, "sig": "hex"}`.

`sig` is HMAC-SHA256, with the device's key, over the canonical JSON of `{"config", "version"}`:
keys sorted, no spaces (separators "," and ":"), non-ASCII characters as themselves, UTF-8.
Parsing never raises anything but `UpdateRejectedError`, whatever the payload (it is fuzzed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import EdgeAgentError

MAX_DEPTH = 16  # a config is at most 4 levels deep; anything deeper is hostile
MAX_VERSION = 2**53  # beyond what every JSON implementation reads exactly
SIG_HEX = 64


class UpdateRejectedError(EdgeAgentError):
    """An update refused: `key` names what is wrong ("sig", "version", "model.path", ...)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class UpdateDoc:
    version: int
    config: dict[str, Any]


def canonical(config: dict[str, Any], version: int) -> bytes:
    return json.dumps(
        {"config": config, "version": version}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def sign(key: bytes, config: dict[str, Any], version: int) -> str:
    return hmac.new(key, canonical(config, version), hashlib.sha256).hexdigest()


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply containers nest in `value`, counting at most to limit + 1 (iterative: a hostile
    document cannot exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > limit:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _finite(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def parse_update(payload: Any, key: bytes) -> UpdateDoc:
    """Check the document's form and signature (not its content: see `overlay`)."""
    _check_shape(payload)
    version, config, sig = payload["version"], payload["config"], payload["sig"]
    _check_version(version)
    if not isinstance(config, dict):
        raise UpdateRejectedError("config", f"must be an object (a partial config), got {type(config).__name__}")
    if not isinstance(sig, str) or len(sig) != SIG_HEX or any(c not in "0123456789abcdefABCDEF" for c in sig):
        raise UpdateRejectedError("sig", f"must be {SIG_HEX} hexadecimal characters (HMAC-SHA256)")
    if not _finite(config):
        raise UpdateRejectedError("config", "holds a non-finite number (NaN or Infinity)")
    try:
        expected = sign(key, config, version)
    except (TypeError, ValueError) as err:  # not representable as canonical JSON
        raise UpdateRejectedError("config", f"cannot be put in canonical form: {err}") from None
    if not hmac.compare_digest(expected, sig.lower()):
        raise UpdateRejectedError(
            "sig", "signature does not match this device's key (wrong key, or the document was altered)"
        )
    return UpdateDoc(version=version, config=config)


def _check_shape(payload: Any) -> None:
    """An object of bounded depth with exactly the fields {version, config, sig}."""
    if not isinstance(payload, dict):
        raise UpdateRejectedError(
            "document", f"must be a JSON object {{version, config, sig}}, got {type(payload).__name__}"
        )
    if depth(payload) > MAX_DEPTH:
        raise UpdateRejectedError("document", f"nested more than {MAX_DEPTH} levels deep")
    # keys named safely: a hostile key need not be text (nor have one: a huge int)
    extra = sorted(
        k if isinstance(k, str) else f"<{type(k).__name__}>" for k in set(payload) - {"version", "config", "sig"}
    )
    if extra:
        raise UpdateRejectedError("document", f"unknown field(s): {', '.join(extra)[:200]}")
    for field in ("version", "config", "sig"):
        if field not in payload:
            raise UpdateRejectedError(field, "missing")


def _check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise UpdateRejectedError("version", f"must be an integer, got {type(version).__name__}")
    if not 1 <= version <= MAX_VERSION:
        got = str(version) if version.bit_length() <= 64 else f"a number of {version.bit_length()} bits"
        raise UpdateRejectedError("version", f"must be from 1 to {MAX_VERSION}, got {got}")
