"""The agent's configuration: a TOML file loaded into frozen pydantic models.

Loading never touches the files the config names (models, keys, frames): validation is
pure, so a config can be checked anywhere, and the parts that open files report their
own errors.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from edge_agent.bounded import MAX_CONFIG_BYTES, FileReadError, quote_part, read_text_bounded
from edge_agent.config._base import Section
from edge_agent.config._types import raw_problems
from edge_agent.config.device import DeviceConfig
from edge_agent.config.guard import GuardConfig
from edge_agent.config.homeassistant import HomeAssistantConfig
from edge_agent.config.metrics import MetricsConfig
from edge_agent.config.model import ModelConfig
from edge_agent.config.mqtt import MqttConfig, TlsConfig
from edge_agent.config.postprocess import PostprocessConfig
from edge_agent.config.preprocess import FeatureConfig, PreprocessConfig
from edge_agent.config.remote import RemoteConfig
from edge_agent.config.service import ServiceConfig
from edge_agent.config.source import SourceConfig
from edge_agent.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/edge-agent/agent.toml"

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "DeviceConfig",
    "FeatureConfig",
    "GuardConfig",
    "HomeAssistantConfig",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "RemoteConfig",
    "ServiceConfig",
    "SourceConfig",
    "TlsConfig",
    "config_path_from_env",
    "format_validation_error",
    "load_config",
    "parse_config",
    "read_toml",
]


class AgentConfig(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    model: ModelConfig
    # None means: take the transform from the model's embedded metadata
    preprocess: PreprocessConfig | None = None
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


# Keys holding file paths, resolved against the config file's folder so that a config and
# the files it names can be moved together.
_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("model", "path"),
    ("model", "labels"),
    ("model", "fallback_path"),
    ("source", "path"),
    ("source", "images_move_to"),
    ("device", "state_dir"),
    ("mqtt", "password_file"),
    ("mqtt", "tls", "ca"),
    ("mqtt", "tls", "cert"),
    ("mqtt", "tls", "key"),
    ("remote", "hmac_key_file"),
    ("remote", "model_dir"),
)


def config_path_from_env(explicit: str | None) -> str:
    return explicit or os.environ.get("EDGE_AGENT_CONFIG") or DEFAULT_CONFIG_PATH


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for keys in _PATH_KEYS:
        node: Any = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        last = keys[-1]
        # an empty path stays empty: resolved, it would name the config's own folder
        if isinstance(node, dict) and isinstance(node.get(last), str) and node[last].strip():
            value = node[last]
            # globs and absolute paths stay as written; "~" is the user's home
            p = Path(value).expanduser()
            if not p.is_absolute() and "://" not in value:
                node[last] = str(base / p)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(err: ValidationError, *, prefix: str = "") -> list[str]:
    """One line per problem, naming the key: `mqtt.port: must be ≤ 65535, got 70000`."""
    lines: list[str] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "literal[")))
        # tuples of sub-models report their index: features.2.std
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        kind = e["type"]
        msg = str(e["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if kind == "extra_forbidden":
            lines.append(f"{key}: unknown key")
            continue
        if kind == "missing":
            lines.append(f"{key}: required")
            continue
        msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
        # a model-level rule already names its key(s); do not prefix it twice
        if kind == "value_error" and (msg.split(":")[0].startswith(key.split(".")[0]) and ":" in msg):
            lines.append(msg)
            continue
        got = "" if kind == "value_error" else f", got {_describe(e.get('input'))}"
        lines.append(f"{key}: {msg}{got}" if key else f"{msg}{got}")
    return lines


def parse_config(raw: dict[str, Any]) -> AgentConfig:
    problems = raw_problems(raw)  # NUL bytes, control characters, nesting: before anything walks it
    if problems:
        raise ConfigError(problems)
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_toml(path: str | os.PathLike[str], *, what: str = "config file") -> dict[str, Any]:
    """A TOML file named by the user, read within bounds: a regular file of at most
    MAX_CONFIG_BYTES (never /dev/zero, a FIFO, a directory), UTF-8, parsed without letting the
    parser's own limits escape (an integer of 5,000 digits, arrays nested 500 deep).
    ConfigError with one line naming the file."""
    p = Path(path)
    try:
        text = read_text_bounded(p, what=what, max_bytes=MAX_CONFIG_BYTES, encoding="UTF-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: {what} not found"]) from None
    except FileReadError as err:  # not a regular file, too large, not UTF-8: the message says which
        raise ConfigError([str(err)]) from None
    except OSError as err:
        raise ConfigError([f"{p}: cannot read {what}: {err.strerror or err}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{p}: invalid TOML: {err}"]) from None
    except RecursionError:  # the parser recurses per nested array or inline table
        raise ConfigError([f"{p}: invalid TOML: arrays or tables nested too deeply to be parsed"]) from None
    except ValueError as err:  # tomllib lets int()'s digit limit through: 5,000 digits
        raise ConfigError([f"{p}: invalid TOML: {quote_part(str(err))}"]) from None


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate a TOML config file; raise ConfigError with one line per problem."""
    p = Path(path)
    raw = read_toml(p)
    problems = raw_problems(raw)  # before the paths are resolved: expanduser() raises on a NUL
    if problems:
        raise ConfigError(problems)
    _resolve_paths(raw, p.resolve().parent)
    return parse_config(raw)
