#!/usr/bin/env python3
"""Check edge-agent's MQTT discovery messages with Home Assistant's own code.

Run it with a Python that has the `homeassistant` package (a development-only environment,
never the agent's: e.g. `python3.11 -m venv /tmp/ha && /tmp/ha/bin/pip install "homeassistant<2024.4"`;
2024.3.3 is the newest release that installs on Python 3.11, as Home Assistant 2024.4 needs 3.12).

    validate_ha_discovery.py CAPTURE.json          check; a JSON report on stdout; exit 1 on a problem
    validate_ha_discovery.py --dump-schema OUT     write the JSON Schema derived from HA's schemas

CAPTURE.json: {"prefix": "homeassistant",
               "discovery": [{"topic": ..., "payload": "<the message as sent>"}, ...],
               "samples": {"<topic>": ["<a message the agent sent there>", ...]}}

What a message goes through, as in Home Assistant's MQTT integration:
1. the topic: `discovery.TOPIC_MATCHER` under the prefix, a component in SUPPORTED_COMPONENTS;
2. the payload: `json_loads_object`, abbreviations expanded (`abbreviations.ABBREVIATIONS`,
   DEVICE_ABBREVIATIONS, ORIGIN_ABBREVIATIONS), `~` substituted — the steps of
   `discovery.async_discovery_message_received`, restated below because HA keeps them inside a
   closure that needs a running hass;
3. the component's DISCOVERY_SCHEMA (the call `async_setup_entity_entry_helper` makes), and
   PLATFORM_SCHEMA_MODERN, which unlike the discovery schema refuses unknown keys (the
   discovery schema drops them silently: a misspelt key would otherwise pass unseen);
4. the templates rendered by HA's template engine against the messages the agent really sent:
   every value_template on its state topic (numbers where the sensor is numeric: a state_class,
   unit or numeric device class), every availability template on its topic (the result must be
   payload_available or payload_not_available);
5. across the device: unique_id unique, one device block.
An empty payload is a removal and is only checked for its topic.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import voluptuous as vol
from homeassistant import const as ha_const
from homeassistant.components.mqtt import discovery
from homeassistant.components.mqtt.abbreviations import ABBREVIATIONS, DEVICE_ABBREVIATIONS, ORIGIN_ABBREVIATIONS
from homeassistant.core import HomeAssistant
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.template import Template
from homeassistant.util.json import json_loads_object

COMPONENTS = ("sensor", "binary_sensor")  # the platforms edge-agent uses: their schemas go into --dump-schema
NUMERIC_DEVICE_CLASSES_EXCLUDED = {"enum", "timestamp", "date"}


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """HA 2024.3's discovery.async_discovery_message_received, steps between parsing and dispatch."""
    for key in list(payload):
        payload[ABBREVIATIONS.get(key, key)] = payload.pop(key)
    if isinstance(payload.get("device"), dict):
        device = payload["device"]
        for key in list(device):
            device[DEVICE_ABBREVIATIONS.get(key, key)] = device.pop(key)
    if isinstance(payload.get("origin"), dict):
        origin = payload["origin"]
        for key in list(origin):
            origin[ORIGIN_ABBREVIATIONS.get(key, key)] = origin.pop(key)
        discovery.MQTT_ORIGIN_INFO_SCHEMA(origin)
    if "availability" in payload:
        for conf in cv.ensure_list(payload["availability"]):
            if isinstance(conf, dict):
                for key in list(conf):
                    conf[ABBREVIATIONS.get(key, key)] = conf.pop(key)
    if discovery.TOPIC_BASE in payload:
        base = payload.pop(discovery.TOPIC_BASE)
        for key, value in payload.items():
            if isinstance(value, str) and value and key.endswith("topic"):
                if value[0] == discovery.TOPIC_BASE:
                    payload[key] = f"{base}{value[1:]}"
                if value[-1] == discovery.TOPIC_BASE:
                    payload[key] = f"{value[:-1]}{base}"
        for conf in cv.ensure_list(payload.get("availability") or []):
            if isinstance(conf, dict) and (topic := str(conf.get("topic"))):
                if topic[0] == discovery.TOPIC_BASE:
                    conf["topic"] = f"{base}{topic[1:]}"
                if topic[-1] == discovery.TOPIC_BASE:
                    conf["topic"] = f"{topic[:-1]}{base}"
    return payload


def _numeric(config: dict[str, Any]) -> bool:
    dc = config.get("device_class")
    dc = dc.value if isinstance(dc, enum.Enum) else dc
    return bool(
        config.get("state_class")
        or config.get("unit_of_measurement")
        or (dc is not None and dc not in NUMERIC_DEVICE_CLASSES_EXCLUDED)
    )


def _render(hass: HomeAssistant, template: Any, payload: str) -> str:
    tpl = Template(template.template if isinstance(template, Template) else str(template), hass)
    return str(tpl.async_render_with_possible_json_value(payload, "<not rendered>"))


def check(capture: dict[str, Any], hass: HomeAssistant) -> dict[str, Any]:
    prefix = capture.get("prefix", "homeassistant")
    samples: dict[str, list[str]] = capture.get("samples", {})
    errors: list[str] = []
    rendered: dict[str, dict[str, list[str]]] = {}
    unique_ids: dict[str, str] = {}
    devices: list[Any] = []
    checked = removals = 0
    for msg in capture["discovery"]:
        topic, raw = msg["topic"], msg["payload"]
        where = topic
        if not topic.startswith(prefix + "/"):
            errors.append(f"{where}: not under the discovery prefix {prefix!r}")
            continue
        match = discovery.TOPIC_MATCHER.match(topic[len(prefix) + 1 :])
        if match is None or not topic.endswith("/config"):
            errors.append(f"{where}: Home Assistant ignores this topic (TOPIC_MATCHER)")
            continue
        component = match.group("component")
        if component not in discovery.SUPPORTED_COMPONENTS:
            errors.append(f"{where}: component {component!r} is not supported by MQTT discovery")
            continue
        if not raw:
            removals += 1
            continue
        try:
            payload = expand(dict(json_loads_object(raw)))
        except (ValueError, vol.Invalid) as err:
            errors.append(f"{where}: {err}")
            continue
        module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        try:
            config = module.DISCOVERY_SCHEMA({**payload, "platform": "mqtt"})
            module.PLATFORM_SCHEMA_MODERN(dict(payload))  # strict: an unknown key is an error here
        except vol.Invalid as err:
            errors.append(f"{where}: {vol.humanize.humanize_error(payload, err)}")
            continue
        checked += 1
        uid = config.get("unique_id")
        if uid is None:
            errors.append(f"{where}: no unique_id (the entity could not be edited or removed in HA's UI)")
        elif uid in unique_ids:
            errors.append(f"{where}: unique_id {uid!r} also used by {unique_ids[uid]}")
        else:
            unique_ids[uid] = topic
        devices.append(config.get("device"))
        out = rendered.setdefault(uid or topic, {})
        state_samples = samples.get(config["state_topic"], [])
        if "value_template" in config and not state_samples:
            errors.append(f"{where}: no sample message on {config['state_topic']} to render value_template with")
        for s in state_samples:
            value = _render(hass, config["value_template"], s) if "value_template" in config else s
            out.setdefault("state", []).append(value)
            if value == "<not rendered>":
                errors.append(f"{where}: value_template failed on {s[:120]}")
            elif _numeric(config) and value != "None":
                try:
                    float(value)
                except ValueError:
                    errors.append(f"{where}: numeric sensor, but value_template gave {value!r} for {s[:120]}")
        for conf in config.get("availability", []):
            for s in samples.get(conf["topic"], []):
                value = _render(hass, conf["value_template"], s) if "value_template" in conf else s
                out.setdefault("availability", []).append(value)
                if value not in (conf["payload_available"], conf["payload_not_available"]):
                    errors.append(
                        f"{where}: availability template gave {value!r} for {s[:120]}, neither "
                        f"{conf['payload_available']!r} nor {conf['payload_not_available']!r}"
                    )
    if any(d != devices[0] for d in devices[1:]):
        errors.append("the entities describe different devices: Home Assistant would make several")
    return {
        "homeassistant": ha_const.__version__,
        "checked": checked,
        "removals": removals,
        "errors": errors,
        "rendered": rendered,
    }


# ---- the JSON Schema for the test's fallback, derived from the voluptuous schemas ---------------
_FUNCTIONS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "template": {"type": "string", "minLength": 1},
    "valid_subscribe_topic": {"type": "string", "minLength": 1},
    "valid_publish_topic": {"type": "string", "minLength": 1, "pattern": "^[^+#]+$"},
    "boolean": {"type": "boolean"},
    "icon": {"type": "string", "pattern": ":"},
    "configuration_url": {"type": "string", "format": "uri"},
    "valid_qos_schema": {"enum": [0, 1, 2]},
    "positive_int": {"type": "integer", "minimum": 0},
}
_SKIP = {"ensure_list", "Lower", "validator", "validate_device_has_at_least_one_identifier"}


def to_json_schema(v: Any) -> dict[str, Any]:
    """A JSON Schema for what the validator accepts in JSON (stricter: no string → bool coercion)."""
    if isinstance(v, vol.Schema):
        return to_json_schema(v.schema) | ({} if v.extra == vol.PREVENT_EXTRA else {"additionalProperties": True})
    if isinstance(v, dict):
        props: dict[str, Any] = {}
        required: list[str] = []
        exclusive: dict[str, list[str]] = {}
        for key, sub in v.items():
            name = str(key.schema) if isinstance(key, vol.Marker) else str(key)
            props[name] = to_json_schema(sub)
            if isinstance(key, vol.Required):
                required.append(name)
            if isinstance(key, vol.Exclusive):
                exclusive.setdefault(key.group_of_exclusion, []).append(name)
        # a dict nested in a schema takes the schema's `extra`: the ones dumped here refuse extras
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            out["required"] = required
        groups = [names for names in exclusive.values() if len(names) > 1]
        if groups:
            out["allOf"] = [{"not": {"required": [a, b]}} for names in groups for a in names for b in names if a < b]
        return out
    if isinstance(v, list):
        (item,) = v
        return {"type": "array", "items": to_json_schema(item)}
    if isinstance(v, vol.All):
        parts = [to_json_schema(x) for x in v.validators if getattr(x, "__name__", "") not in _SKIP]
        names = [getattr(x, "__name__", "") for x in v.validators]
        merged: dict[str, Any] = {}
        for p in parts:
            merged |= p
        if "ensure_list" in names and merged.get("type") == "array":
            # ensure_list: a single value stands for a one-element list
            merged = {"anyOf": [merged, merged["items"]]}
        if "validate_device_has_at_least_one_identifier" in names:
            merged["anyOf"] = [
                {"required": ["identifiers"], "properties": {"identifiers": {"minItems": 1}}},
                {"required": ["connections"], "properties": {"connections": {"minItems": 1}}},
            ]
        return merged
    if isinstance(v, vol.Any):
        return {"anyOf": [to_json_schema(x) for x in v.validators]}
    if v is None:
        return {"type": "null"}
    if isinstance(v, vol.Coerce):
        if isinstance(v.type, type) and issubclass(v.type, enum.Enum):
            return {"enum": sorted(str(m.value) for m in v.type)}
        if v.type is int:
            return {"type": "integer"}
        if v.type is float:
            return {"type": "number"}
    if isinstance(v, vol.Range):
        return {k: x for k, x in (("minimum", v.min), ("maximum", v.max)) if x is not None}
    if isinstance(v, vol.In):
        return {"enum": list(v.container)}
    if isinstance(v, vol.Length):
        return {k: x for k, x in (("minItems", v.min), ("maxItems", v.max)) if x is not None}
    name = getattr(v, "__name__", None)
    if name in _FUNCTIONS:
        return dict(_FUNCTIONS[name])
    if name in _SKIP:
        return {}
    raise TypeError(f"no JSON Schema for validator {v!r}")


def dump_schema(out: Path) -> None:
    doc: dict[str, Any] = {
        "description": (
            "Derived by scripts/validate_ha_discovery.py --dump-schema from Home Assistant "
            f"{ha_const.__version__}'s MQTT discovery schemas (PLATFORM_SCHEMA_MODERN of each component; the "
            "removed last_reset_topic left out) with its abbreviation tables and discovery topic "
            "pattern. Stricter than HA where HA coerces (a string for a boolean or a number). "
            "Templates are only checked to be non-empty strings here."
        ),
        "homeassistant": ha_const.__version__,
        "topic_pattern": discovery.TOPIC_MATCHER.pattern,
        "supported_components": sorted(discovery.SUPPORTED_COMPONENTS),
        "abbreviations": dict(sorted(ABBREVIATIONS.items())),
        "device_abbreviations": dict(sorted(DEVICE_ABBREVIATIONS.items())),
        "origin_abbreviations": dict(sorted(ORIGIN_ABBREVIATIONS.items())),
        "components": {},
    }
    for component in COMPONENTS:
        module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        schema = module.PLATFORM_SCHEMA_MODERN
        if isinstance(schema, vol.All):  # sensor: vol.All(cv.removed(last_reset_topic), the schema)
            schema = next(x for x in schema.validators if isinstance(x, vol.Schema))
        doc["components"][component] = {"$schema": "https://json-schema.org/draft/2020-12/schema"} | to_json_schema(
            schema
        )
    out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


async def _main_async(capture: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as config_dir:
        hass = HomeAssistant(config_dir)
        return check(capture, hass)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", nargs="?", type=Path)
    ap.add_argument("--dump-schema", type=Path, metavar="OUT")
    args = ap.parse_args()
    if args.dump_schema:
        dump_schema(args.dump_schema)
        return 0
    if args.capture is None:
        ap.error("a capture file or --dump-schema")
    report = asyncio.run(_main_async(json.loads(args.capture.read_text())))
    json.dump(report, sys.stdout, indent=1)
    print()
    for e in report["errors"]:
        print(f"error: {e}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
