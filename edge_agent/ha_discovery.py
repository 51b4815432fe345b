"""Home Assistant MQTT discovery: one device, its entities read from the SPEC topics.

On every connect (retained messages survive a broker restart only when it persists them, and a
reconnect is cheap) the agent publishes one retained config per entity under
`<discovery_prefix>/sensor/<node>/<entity>/config`. Home Assistant then reads the agent's own
topics: `status` (the state, and the availability of the other entities), `results` (last label
and score) and `stats` (fps, inference time, faults). Nothing is published twice: the entities
only describe how to read what the agent already sends.

Which config topics were published is remembered in `state_dir/ha_discovery.json`, so that a
device whose discovery is turned off (or whose prefix or id changed) clears them with empty
retained messages, which makes Home Assistant remove the entities and then the device.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.bounded import MAX_CONFIG_BYTES, read_bytes_bounded
from edge_agent.bounded_json import loads_bounded
from edge_agent.config import HomeAssistantConfig
from edge_agent.mqtt.link import encode
from edge_agent.mqtt.topics import Topics

log = logging.getLogger(__name__)

STATE_FILE = "ha_discovery.json"
# Home Assistant's discovery topic matcher allows only these in the node and object ids
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# `degraded` is still a working agent that reports (it says why on `events`): available
AVAILABILITY_TEMPLATE = "{{ 'online' if value_json.state in ['online', 'degraded'] else 'offline' }}"
# classification results carry `top`, detection results `objects`: the best-scoring one of either;
# "None" is Home Assistant's word for "no value" (the state becomes unknown, not the text)
_BEST = (
    "{% set t = value_json.top if value_json.top is defined else value_json.objects | default([]) %}"
    "{% set b = t | sort(attribute='score', reverse=true) | first if t else none %}"
)
LABEL_TEMPLATE = _BEST + "{{ b.label if b else None }}"
SCORE_TEMPLATE = _BEST + "{{ b.score if b else None }}"
INFERENCE_TEMPLATE = "{{ value_json.stages.invoke.p50_ms if value_json.stages.invoke is defined else None }}"
FAULTS_TEMPLATE = "{{ value_json.faults.values() | sum }}"


class Publish(Protocol):
    def __call__(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> Any: ...


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: its platform, object id and the config keys of its own."""

    component: str
    object_id: str
    config: dict[str, Any]


def node_id(device_id: str) -> str:
    return _NODE_UNSAFE.sub("_", device_id)


def entities(topics: Topics) -> tuple[Entity, ...]:
    return (*_status_entities(topics), *_result_entities(topics), *_stats_entities(topics))


_MEASUREMENT = {"state_class": "measurement"}


def _status_entities(topics: Topics) -> tuple[Entity, ...]:
    return (
        # no availability: this one shows `offline` (the Last Will) instead of going unavailable
        Entity(
            "sensor",
            "status",
            {
                "name": "Status",
                "state_topic": topics.status,
                "value_template": "{{ value_json.state }}",
                "icon": "mdi:lan-connect",
            },
        ),
    )


def _result_entities(topics: Topics) -> tuple[Entity, ...]:
    return (
        Entity(
            "sensor",
            "last_label",
            {"name": "Last label", "state_topic": topics.results, "value_template": LABEL_TEMPLATE, "icon": "mdi:tag"},
        ),
        Entity(
            "sensor",
            "last_score",
            {
                "name": "Last score",
                "state_topic": topics.results,
                "value_template": SCORE_TEMPLATE,
                "suggested_display_precision": 3,
                "icon": "mdi:percent",
                **_MEASUREMENT,
            },
        ),
    )


def _stats_entities(topics: Topics) -> tuple[Entity, ...]:
    return (
        Entity(
            "sensor",
            "fps",
            {
                "name": "Frame rate",
                "state_topic": topics.stats,
                "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps",
                "icon": "mdi:speedometer",
                **_MEASUREMENT,
            },
        ),
        Entity(
            "sensor",
            "inference_ms",
            {
                "name": "Inference time",
                "state_topic": topics.stats,
                "value_template": INFERENCE_TEMPLATE,
                "unit_of_measurement": "ms",
                "device_class": "duration",
                **_MEASUREMENT,
            },
        ),
        Entity(
            "sensor",
            "faults",
            {
                "name": "Faults",
                "state_topic": topics.stats,
                "value_template": FAULTS_TEMPLATE,
                "icon": "mdi:alert-circle-outline",
                # counted since the agent started: a restart is a reset, which total_increasing expects
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
            },
        ),
    )


def discovery_configs(cfg: HomeAssistantConfig, topics: Topics, version: str) -> dict[str, dict[str, Any]]:
    """Config topic → retained payload, for every entity of the device."""
    node = node_id(topics.device)
    device = {
        "identifiers": [topics.device],
        "name": cfg.name or topics.device,
        "model": "edge-agent",
        "manufacturer": "edge-agent",
        "sw_version": version,
    }
    availability = [
        {
            "topic": topics.status,
            "value_template": AVAILABILITY_TEMPLATE,
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    out: dict[str, dict[str, Any]] = {}
    for e in entities(topics):
        payload: dict[str, Any] = {
            **e.config,
            "unique_id": f"edge_agent_{node}_{e.object_id}",
            "object_id": f"{node}_{e.object_id}",
            "device": device,
            "origin": {"name": "edge-agent", "sw_version": version},
        }
        if e.config["state_topic"] != topics.status:
            payload["availability"] = availability
        out[f"{cfg.discovery_prefix}/{e.component}/{node}/{e.object_id}/config"] = payload
    return out


class Discovery:
    """Publishes the configs on connect, or clears the ones a former run left behind."""

    def __init__(
        self, cfg: HomeAssistantConfig, topics: Topics, state_dir: Path, *, version: str, publish: Publish
    ) -> None:
        self.cfg = cfg
        self._configs = discovery_configs(cfg, topics, version) if cfg.enabled else {}
        self._state = state_dir / STATE_FILE
        self._publish = publish
        self._lock = threading.Lock()
        # removals sent and not yet acknowledged; the state file goes once they all are
        self._removing: list[Any] = []
        self._remembered = self._read_state()

    def _read_state(self) -> set[str]:
        try:
            doc = loads_bounded(read_bytes_bounded(self._state, what="discovery state", max_bytes=MAX_CONFIG_BYTES))
            return {t for t in doc["topics"] if isinstance(t, str)}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as err:  # FileReadError, JsonLimitError among them
            detail = getattr(err, "strerror", None) or err
            log.warning("homeassistant: cannot read %s (%s): entities it lists cannot be removed", self._state, detail)
            return set()

    def _write_state(self, topics: set[str]) -> None:
        try:
            if topics:
                tmp = self._state.with_suffix(".tmp")
                tmp.write_text(json.dumps({"topics": sorted(topics)}), encoding="utf-8")
                tmp.replace(self._state)
            else:
                self._state.unlink(missing_ok=True)
        except OSError as err:
            log.warning("homeassistant: cannot write %s: %s", self._state, err.strerror or err)

    def on_connected(self) -> None:
        """The link's hook (paho's network thread): publish, or clear what is no longer wanted."""
        with self._lock:
            stale = self._remembered - set(self._configs)
            if self._configs:
                # remembered before sending: a crash in between still leaves a record to clear
                self._remembered = set(self._configs) | stale
                self._write_state(self._remembered)
                for topic, payload in self._configs.items():
                    self._publish(topic, encode(payload), qos=1, retain=True)
                log.info("homeassistant: published %d discovery configs", len(self._configs))
            if stale:
                self._removing = [self._publish(t, b"", qos=1, retain=True) for t in sorted(stale)]
                log.info("homeassistant: removing %d discovery configs no longer wanted", len(stale))

    def poll(self) -> None:
        """From the agent's loop: forget the removed topics once the broker has them."""
        with self._lock:
            if not self._removing or not all(_published(i) for i in self._removing):
                return
            self._removing = []
            self._remembered &= set(self._configs)
            self._write_state(self._remembered)

    @property
    def remembered(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._remembered)


def _published(info: Any) -> bool:
    is_published: Callable[[], bool] | None = getattr(info, "is_published", None)
    try:
        return bool(is_published()) if is_published is not None else True
    except (ValueError, RuntimeError):
        return False  # not sent (the link dropped): the next connect sends the removals again
