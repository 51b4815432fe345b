"""What an update may change, and the config it makes.

An update's `config` is a partial config. Its leaves are dotted keys ("postprocess.threshold");
each must exist in the config schema and be allowed by `remote.allowed` (a section name allows
everything under it). It is merged onto the overlay already applied, and the overlay onto the
file config; the result must validate as a whole.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

from pydantic import BaseModel

from edge_agent.config import AgentConfig, parse_config
from edge_agent.errors import ConfigError
from edge_agent.remote.document import UpdateRejectedError

MAX_KEYS = 200


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            m = _model_of(arg)
            if m is not None:
                return m
    return None


def leaf_keys(config: dict[str, Any]) -> list[str]:
    """The dotted keys an update sets: down to a value that is not a section of the schema."""
    out: list[str] = []
    stack: list[tuple[str, Any, type[BaseModel] | None]] = [("", config, AgentConfig)]
    while stack:
        prefix, value, model = stack.pop()
        if model is None or not isinstance(value, dict) or not value:
            out.append(prefix)
            continue
        for k, v in value.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            field = model.model_fields.get(str(k))
            if field is None:
                raise UpdateRejectedError(key, "unknown key")
            stack.append((key, v, _model_of(field.annotation)))
        if len(out) + len(stack) > MAX_KEYS:
            raise UpdateRejectedError("config", f"more than {MAX_KEYS} keys in one update")
    return sorted(out)


def check_allowed(keys: list[str], allowed: tuple[str, ...]) -> None:
    for key in keys:
        if not any(key == a or key.startswith(a + ".") for a in allowed):
            raise UpdateRejectedError(key, f"not allowed to change remotely (remote.allowed: {', '.join(allowed)})")


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, section by section (a new copy; neither argument is changed)."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_config(file_cfg: AgentConfig, overlay: dict[str, Any]) -> AgentConfig:
    """The file config with the overlay merged in, validated; UpdateRejectedError naming the first bad key."""
    try:
        return parse_config(merge(file_cfg.model_dump(mode="json"), overlay))
    except ConfigError as err:
        first = err.problems[0] if err.problems else "invalid"
        key, _, message = first.partition(": ")
        raise UpdateRejectedError(key or "config", message or first) from None
