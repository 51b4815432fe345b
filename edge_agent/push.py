"""`edge-agent config push`: sign a partial config, publish it, wait for the devices' answers.

The operator's side of SPEC "Remote updates". The broker settings and the update key come
from an agent-style config file (its `[mqtt]` section and `remote.hmac_key_file`; no other
section is needed or checked) and/or from flags. The version, unless given, is one more
than the device's retained `config/state` (for a group: the highest among the members'
retained states), so that a push never repeats or goes below a running version.

Exit codes: 0 every answer applied, 1 any rejected, 3 no answer (or fewer than expected),
2 nothing was sent (an unreadable update file, config or key).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge_agent.bounded import MAX_CONFIG_BYTES, FileReadError, read_text_bounded
from edge_agent.bounded_json import JsonLimitError, loads_bounded
from edge_agent.config import MqttConfig, format_validation_error, read_toml
from edge_agent.config._base import TOPIC_SEGMENT
from edge_agent.config._types import raw_problems
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.mqtt.link import (
    ConnectSetupError,
    connect_async,
    describe_connect_error,
    load_credentials,
    load_tls,
    make_client,
)
from edge_agent.remote.document import MAX_VERSION, UpdateRejectedError, parse_update, sign
from edge_agent.remote.updater import MIN_KEY_BYTES
from edge_agent.secrets import read_secret

EXIT_APPLIED = 0
EXIT_REJECTED = 1
EXIT_INVALID = 2
EXIT_NO_ANSWER = 3

DEFAULT_TIMEOUT_S = 30.0
STATE_WAIT_S = 1.5  # how long retained config/state messages are gathered before choosing a version
CONNECT_TIMEOUT_S = 10.0


class PushError(EdgeAgentError):
    """Nothing was sent, or nothing could be: one line for the operator, and the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_INVALID) -> None:
        self.exit_code = exit_code
        super().__init__(message)


# ---- inputs -------------------------------------------------------------------------------
def load_update_file(path: str) -> dict[str, Any]:
    """The partial config to push: TOML or JSON by the file's suffix; PushError on anything else."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise PushError(f"{p}: an update file must end in .toml or .json")
    if suffix == ".toml":
        try:
            doc: Any = read_toml(p, what="update file")
        except ConfigError as err:
            raise PushError(str(err)) from None
    else:
        try:
            text = read_text_bounded(p, what="update file", max_bytes=MAX_CONFIG_BYTES, encoding="UTF-8")
        except FileNotFoundError:
            raise PushError(f"{p}: file not found") from None
        except FileReadError as err:  # a FIFO, /dev/zero, a directory, too large, not UTF-8
            raise PushError(str(err)) from None
        except OSError as err:
            raise PushError(f"{p}: cannot read: {err.strerror or err}") from None
        try:
            doc = loads_bounded(text, finite=True)  # an update holds finite numbers only
        except JsonLimitError as err:
            raise PushError(f"{p}: invalid JSON: {str(err).removeprefix('is not valid JSON: ')}") from None
    if not isinstance(doc, dict):
        raise PushError(f"{p}: must hold an object (a partial config), got {type(doc).__name__}")
    problems = raw_problems(doc)
    if problems:
        raise PushError(f"{p}: {problems[0]}")
    return doc


@dataclass(frozen=True)
class PushSettings:
    mqtt: MqttConfig
    key: bytes


def _resolve(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return value if p.is_absolute() else str(base / p)


def load_settings(
    config_path: str | None, *, host: str | None = None, port: int | None = None, key_file: str | None = None
) -> PushSettings:
    """The broker link and the update key: from the config file's `[mqtt]` and `remote.hmac_key_file`,
    overridden by the flags. Paths in the file are relative to its folder, as for the agent."""
    raw_mqtt, file_key = _from_config_file(Path(config_path)) if config_path is not None else ({}, None)
    key_path = key_file if key_file is not None else file_key
    if host is not None:
        raw_mqtt["host"] = host
    if port is not None:
        raw_mqtt["port"] = port
    try:
        cfg = MqttConfig.model_validate(raw_mqtt)
    except ValidationError as err:
        raise PushError("; ".join(format_validation_error(err, prefix="mqtt."))) from None
    if key_path is None:
        raise PushError("no update key: give --key FILE, or -c CONFIG with remote.hmac_key_file")
    return PushSettings(cfg, _read_key(key_path))


def _from_config_file(p: Path) -> tuple[dict[str, Any], str | None]:
    """The raw `[mqtt]` table and `remote.hmac_key_file`, their paths made absolute."""
    try:
        raw = read_toml(p)
    except ConfigError as err:
        raise PushError(str(err)) from None
    problems = raw_problems(raw)  # a NUL in a path would raise out of every file call
    if problems:
        raise PushError(f"{p}: {problems[0]}")
    base = p.resolve().parent
    section = raw.get("mqtt", {})
    if not isinstance(section, dict):
        raise PushError(f"{p}: mqtt: must be a table")
    raw_mqtt = dict(section)
    if isinstance(raw_mqtt.get("password_file"), str):
        raw_mqtt["password_file"] = _resolve(raw_mqtt["password_file"], base)
    tls = raw_mqtt.get("tls")
    if isinstance(tls, dict):
        raw_mqtt["tls"] = {
            k: _resolve(v, base) if k in ("ca", "cert", "key") and isinstance(v, str) else v for k, v in tls.items()
        }
    remote = raw.get("remote", {})
    if isinstance(remote, dict) and isinstance(remote.get("hmac_key_file"), str):
        return raw_mqtt, _resolve(remote["hmac_key_file"], base)
    return raw_mqtt, None


def _read_key(key_path: str) -> bytes:
    try:
        key = read_secret(key_path).encode("utf-8")  # exactly as the agent reads it
    except ConfigError as err:
        raise PushError(f"update key: {err}") from None
    if len(key) < MIN_KEY_BYTES:
        raise PushError(f"update key {key_path}: shorter than {MIN_KEY_BYTES} bytes (the agents refuse such a key)")
    return key


# ---- answers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    device: str
    applied: bool
    version: int | None
    errors: tuple[tuple[str, str], ...]
    note: str | None

    @classmethod
    def from_payload(cls, device: str, payload: Any) -> Answer | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("applied"), bool):
            return None
        version = payload.get("version")
        errors: list[tuple[str, str]] = []
        raw_errors = payload.get("errors")
        for e in raw_errors if isinstance(raw_errors, list) else []:
            if isinstance(e, dict):
                errors.append((str(e.get("key", "?")), str(e.get("message", ""))))
        note = payload.get("note")
        return cls(
            device,
            payload["applied"],
            version if isinstance(version, int) and not isinstance(version, bool) else None,
            tuple(errors),
            note if isinstance(note, str) else None,
        )


@dataclass
class PushOutcome:
    target: str  # the topic the update went to
    version: int
    answers: list[Answer] = field(default_factory=list)
    expected: int | None = None  # how many answers a group push waited for
    silent: list[str] = field(default_factory=list)  # the device, or known group members, that did not answer
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def exit_code(self) -> int:
        if any(not a.applied for a in self.answers):
            return EXIT_REJECTED
        if not self.answers or (self.expected is not None and len(self.answers) < self.expected):
            return EXIT_NO_ANSWER
        return EXIT_APPLIED

    def table(self) -> list[str]:
        rows = [("DEVICE", "APPLIED", "VERSION", "ERRORS / NOTES")]
        for a in sorted(self.answers, key=lambda a: a.device):
            detail = "; ".join(f"{k}: {m}" for k, m in a.errors) or (a.note or "")
            rows.append((a.device, "yes" if a.applied else "no", str(a.version), detail))
        rows.extend((d, "-", "-", f"no answer within {self.timeout:g} s") for d in sorted(self.silent))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
        applied = sum(a.applied for a in self.answers)
        summary = f"version {self.version} to {self.target}: {len(self.answers)} answer(s), {applied} applied"
        if self.expected is not None:
            summary += f", {self.expected} expected"
        if not self.answers and not self.silent:
            return [summary, f"no answer within {self.timeout:g} s"]
        return [summary, *lines]


# ---- the broker session -------------------------------------------------------------------
@dataclass(frozen=True)
class _Msg:
    topic: str
    payload: Any


class _Session:
    """A short-lived client: connect, subscribe (acknowledged), publish QoS 1, read messages."""

    def __init__(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        # never the agent's client id: the broker would disconnect the agent using it
        self.client = make_client(cfg, f"edge-agent-push-{uuid.uuid4().hex[:12]}")
        self.messages: queue.Queue[_Msg] = queue.Queue()
        self._connected = threading.Event()
        self._failed: str | None = None
        self._subacks: set[int] = set()
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect_failed = self._on_connect_failed

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            self._failed = f"the broker at {self.cfg.host}:{self.cfg.port} refused the connection: {reason}"
        self._connected.set()

    def _on_connect_failed(self, err: OSError) -> None:
        self._failed = describe_connect_error(err, self.cfg)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: Any = loads_bounded(bytes(msg.payload))
        except JsonLimitError:  # not an answer this tool can read: 5,000 digits, deep nesting, not JSON
            payload = None
        self.messages.put(_Msg(msg.topic, payload))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, *_: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def connect(self) -> None:
        try:
            load_tls(self.client, self.cfg)
            load_credentials(self.client, self.cfg)
        except ConnectSetupError as err:
            raise PushError(str(err)) from None
        connect_async(self.client, self.cfg)
        self.client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S):
            self._failed = f"cannot reach the broker at {self.cfg.host}:{self.cfg.port}: timed out"
        if self._failed is not None:
            self.close()
            raise PushError(f"{self._failed}: nothing was sent", EXIT_NO_ANSWER)

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        with self._cond:
            while mid not in self._subacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PushError(f"the broker did not acknowledge the subscription to {topic}", EXIT_NO_ANSWER)
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=False)
        info.wait_for_publish(CONNECT_TIMEOUT_S)
        if not info.is_published():
            raise PushError(f"the broker did not acknowledge the update on {topic}", EXIT_NO_ANSWER)

    def next_message(self, deadline: float) -> _Msg | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return self.messages.get(timeout=left)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _state_version(payload: Any) -> int | None:
    v = payload.get("version") if isinstance(payload, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _device_of(topic: str, prefix: str) -> str:
    return topic[len(prefix) + 1 :].split("/", 1)[0]


def push(
    settings: PushSettings,
    config: dict[str, Any],
    *,
    device: str | None = None,
    group: str | None = None,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    expect: int | None = None,
    state_wait: float = STATE_WAIT_S,
) -> PushOutcome:
    """Sign `config` and publish it to one device or a group; gather the answers until each
    expected one came or `timeout` passed. PushError if nothing could be sent."""
    name = _check_request(device=device, group=group, version=version, timeout=timeout, expect=expect)
    prefix = settings.mqtt.topic_prefix
    session = _Session(settings.mqtt)
    session.connect()
    try:
        # answers first: nothing a device says after the publish may be missed
        session.subscribe(f"{prefix}/+/config/result")
        members: dict[str, int] = {}  # known devices (group members) -> their running version
        if group is not None or version is None:
            members = _running_versions(session, prefix, device=device, group=group, wait=state_wait)
        if version is None:
            version = max(members.values(), default=0) + 1
        doc = _signed_document(settings.key, config, version)
        target = f"{prefix}/{device}/config/set" if device is not None else f"{prefix}/group/{group}/config/set"
        wanted = 1 if device is not None else (expect if expect is not None else (len(members) or None))
        outcome = PushOutcome(target, version, expected=None if device is not None else wanted, timeout=timeout)
        session.publish(target, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        seen = _gather_answers(session, outcome, prefix=prefix, device=device, wanted=wanted)
        outcome.silent = sorted(set(members if group is not None else [name]) - seen)
        return outcome
    finally:
        session.close()


def _check_request(
    *, device: str | None, group: str | None, version: int | None, timeout: float, expect: int | None
) -> str:
    """The arguments checked before anything is sent; the device's or the group's name."""
    if (device is None) == (group is None):
        raise PushError("give exactly one of --device ID or --group G")
    name = device if device is not None else group
    assert name is not None
    if not TOPIC_SEGMENT.match(name):
        what = "--device" if device is not None else "--group"
        raise PushError(f"{what}: {name!r} is not a device or group name (letters, digits, '_', '.', '-'; at most 64)")
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise PushError(f"--version: must be from 1 to {MAX_VERSION}, got {version}")
    if not 0 < timeout < 10**6:  # NaN too
        raise PushError(f"--timeout: must be a positive number of seconds, got {timeout}")
    if expect is not None and expect < 1:
        raise PushError(f"--expect: must be at least 1, got {expect}")
    return name


def _running_versions(
    session: _Session, prefix: str, *, device: str | None, group: str | None, wait: float
) -> dict[str, int]:
    """The running version of the device, or of each group member, from the retained config/state."""
    members: dict[str, int] = {}
    state_topic = f"{prefix}/{device}/config/state" if device is not None else f"{prefix}/+/config/state"
    session.subscribe(state_topic)
    deadline = time.monotonic() + wait
    while (msg := session.next_message(deadline)) is not None:
        if not msg.topic.endswith("/config/state"):
            continue  # an answer to somebody else's push: not ours
        dev, running = _device_of(msg.topic, prefix), _state_version(msg.payload)
        if running is None:
            continue
        if group is not None:
            groups = msg.payload.get("groups")
            if not isinstance(groups, list) or group not in groups:
                continue
        members[dev] = running
        if device is not None:
            break  # the one retained message there is
    session.client.unsubscribe(state_topic)
    return members


def _signed_document(key: bytes, config: dict[str, Any], version: int) -> dict[str, Any]:
    """The update document, checked as the agent will check it."""
    try:
        sig = sign(key, config, version)
    except (TypeError, ValueError) as err:
        raise PushError(f"the update cannot be put in canonical JSON: {err}") from None
    doc = {"version": version, "config": config, "sig": sig}
    try:
        parse_update(doc, key)  # the agent's own checks of the document's form
    except UpdateRejectedError as err:
        raise PushError(f"the update would be rejected: {err}") from None
    return doc


def _gather_answers(
    session: _Session, outcome: PushOutcome, *, prefix: str, device: str | None, wanted: int | None
) -> set[str]:
    """Each device's first answer to this version into `outcome`, until `wanted` came or time is up;
    the devices that answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + outcome.timeout
    while wanted is None or len(outcome.answers) < wanted:
        msg = session.next_message(deadline)
        if msg is None:
            break
        if not msg.topic.endswith("/config/result"):
            continue
        dev = _device_of(msg.topic, prefix)
        if (device is not None and dev != device) or dev in seen:
            continue
        answer = Answer.from_payload(dev, msg.payload)
        # a document the inbox refused unread (too large, not JSON) is answered without a version
        if answer is None or not _answers(answer, outcome.version):
            continue
        seen.add(dev)
        outcome.answers.append(answer)
    return seen


def _answers(answer: Answer, version: int) -> bool:
    """Whether an answer is to this push: its version, or a refusal of a document read without one."""
    return answer.version == version or (answer.version is None and not answer.applied)


def config_from_env(explicit: str | None) -> str | None:
    """`-c`, else $EDGE_AGENT_CONFIG; no default file (an operator's machine is not a device)."""
    return explicit or os.environ.get("EDGE_AGENT_CONFIG") or None
