"""The JSON Schemas of the MQTT payloads (schemas/ at the repository root), for the tests.

`validate("result", payload)` raises AssertionError naming the schema, the failing part of
the payload and the schema rule, followed by the whole payload.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
NAMES = ("status", "result", "event", "stats", "config_result", "config_state", "cmd_result")

# the device's topic leaf (after `prefix/device/`) → the schema of what the agent publishes there
SCHEMA_OF_LEAF = {
    "status": "status",
    "results": "result",
    "events": "event",
    "stats": "stats",
    "config/result": "config_result",
    "config/state": "config_state",
    "cmd/result": "cmd_result",
}


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    if name not in NAMES:
        raise KeyError(f"no schema {name!r} (known: {', '.join(NAMES)})")
    return Draft202012Validator(schema(name))


def errors(name: str, payload: Any) -> list[str]:
    """Every violation, one line each (empty when the payload is valid)."""
    return [_describe(e) for e in sorted(validator(name).iter_errors(payload), key=lambda e: list(e.path))]


def validate(name: str, payload: Any) -> None:
    found = list(validator(name).iter_errors(payload))
    if found:
        first = best_match(found)
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise AssertionError(
            f"{name}.schema.json: {_describe(first)}{more}\npayload: {json.dumps(payload, ensure_ascii=False)}"
        )


def _describe(err: Any) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    rule = "/".join(str(p) for p in err.absolute_schema_path)
    return f"at {where}: {err.message} [schema: {rule}]"
