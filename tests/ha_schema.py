"""Validate Home Assistant discovery messages: with Home Assistant itself, or its derived schema.

With `EDGE_AGENT_HA_PYTHON` naming a Python that has the `homeassistant` package (a
development-only environment), scripts/validate_ha_discovery.py runs there: HA's own topic
matcher, abbreviation expansion, DISCOVERY_SCHEMA and PLATFORM_SCHEMA_MODERN, and HA's template
engine rendering each template against the agent's real messages.

Without it, the fallback here checks the same messages against tests/ha_discovery_schema.json,
which that script derived from Home Assistant's voluptuous schemas (the version is named in the
file): the topic pattern, the abbreviations expanded as HA expands them, required keys, types,
enums (device and state classes, entity categories), the availability and device structures,
and unknown keys. Not verified by the fallback: Jinja syntax and what the templates render to.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "scripts" / "validate_ha_discovery.py"
SCHEMA_FILE = HERE / "ha_discovery_schema.json"
HA_PYTHON_ENV = "EDGE_AGENT_HA_PYTHON"


def load_schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return doc


def expand(payload: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Home Assistant's expansion (discovery.async_discovery_message_received) with its tables."""
    abbr, dev_abbr, origin_abbr = (
        schema["abbreviations"],
        schema["device_abbreviations"],
        schema["origin_abbreviations"],
    )
    out = {abbr.get(k, k): v for k, v in payload.items()}
    if isinstance(out.get("device"), dict):
        out["device"] = {dev_abbr.get(k, k): v for k, v in out["device"].items()}
    if isinstance(out.get("origin"), dict):
        out["origin"] = {origin_abbr.get(k, k): v for k, v in out["origin"].items()}
    avail = out.get("availability")
    if isinstance(avail, list):
        out["availability"] = [{abbr.get(k, k): v for k, v in a.items()} if isinstance(a, dict) else a for a in avail]
    if "~" in out:
        base = out.pop("~")
        for k, v in list(out.items()):
            if isinstance(v, str) and v and k.endswith("topic"):
                if v[0] == "~":
                    out[k] = base + v[1:]
                if v[-1] == "~":
                    out[k] = v[:-1] + base
        for a in out.get("availability") or []:
            if isinstance(a, dict) and isinstance(a.get("topic"), str) and a["topic"]:
                t = a["topic"]
                a["topic"] = base + t[1:] if t[0] == "~" else (t[:-1] + base if t[-1] == "~" else t)
    return out


def fallback_check(capture: dict[str, Any]) -> list[str]:
    schema = load_schema()
    prefix = capture.get("prefix", "homeassistant")
    matcher = re.compile(schema["topic_pattern"])
    errors: list[str] = []
    unique_ids: dict[str, str] = {}
    devices: list[Any] = []
    for msg in capture["discovery"]:
        topic, raw = msg["topic"], msg["payload"]
        rest = topic.removeprefix(prefix + "/")
        m = matcher.match(rest) if rest != topic else None
        if m is None or not topic.endswith("/config"):
            errors.append(f"{topic}: Home Assistant ignores this topic")
            continue
        component = m.group("component")
        if component not in schema["components"]:
            errors.append(f"{topic}: no schema for component {component!r}")
            continue
        if not raw:
            continue  # a removal
        try:
            parsed = json.loads(raw)
        except ValueError as err:
            errors.append(f"{topic}: not JSON: {err}")
            continue
        if not isinstance(parsed, dict):
            errors.append(f"{topic}: not a JSON object")
            continue
        payload = expand(parsed, schema)
        validator = jsonschema.Draft202012Validator(schema["components"][component])
        for e in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in e.absolute_path) or "(payload)"
            errors.append(f"{topic}: {where}: {e.message}")
        uid = payload.get("unique_id")
        if not isinstance(uid, str):
            errors.append(f"{topic}: no unique_id")
        elif uid in unique_ids:
            errors.append(f"{topic}: unique_id {uid!r} also used by {unique_ids[uid]}")
        else:
            unique_ids[uid] = topic
        devices.append(payload.get("device"))
    if any(d != devices[0] for d in devices[1:]):
        errors.append("the entities describe different devices")
    return errors


def ha_python() -> str | None:
    return os.environ.get(HA_PYTHON_ENV) or None


def ha_check(capture: dict[str, Any], tmp: Path) -> tuple[list[str], dict[str, Any]]:
    """Run the validator under Home Assistant's Python; (errors, report)."""
    python = ha_python()
    assert python is not None
    f = tmp / "ha_capture.json"
    f.write_text(json.dumps(capture))
    proc = subprocess.run([python, str(SCRIPT), str(f)], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise AssertionError(f"{SCRIPT.name} failed under {python}: {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return list(report["errors"]), report
