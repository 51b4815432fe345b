"""The retained `config/state`: the running config without secrets, its version and sha256."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edge_agent.config import AgentConfig

# credentials and where they live are nobody's business on the broker
SECRET_KEYS = (("mqtt", "username"), ("mqtt", "password_file"), ("mqtt", "tls"), ("remote", "hmac_key_file"))


def config_state(cfg: AgentConfig, version: int) -> dict[str, Any]:
    doc = cfg.model_dump(mode="json")
    for section, key in SECRET_KEYS:
        part = doc.get(section)
        if isinstance(part, dict):
            part.pop(key, None)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"version": version, "sha256": digest, "groups": list(cfg.device.groups), "config": doc}
