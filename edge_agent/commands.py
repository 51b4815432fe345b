"""Incoming commands (`P/D/cmd/<name>`) and config updates, queued from the network thread.

paho calls the handlers in its own thread; they only parse and queue. The agent's loop
drains the queue between two frames, so commands never race the pipeline.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COMMANDS = ("snapshot", "reload", "pause", "resume", "selftest", "mask")
INBOX_SIZE = 64
# a command's optional `id`, echoed in its answer: a string this long at most, or an integer
MAX_ID_CHARS = 128
MAX_ID_INT = 2**63 - 1

CommandId = str | int


class BadCommandIdError(ValueError):
    """A command payload's `id` that cannot be echoed; str() is the one-line reason."""


def command_id(payload: Any) -> CommandId | None:
    """The `id` a sender put in a command's JSON object, to match its answer (None if absent)."""
    if not isinstance(payload, dict) or "id" not in payload:
        return None
    cid = payload["id"]
    if isinstance(cid, str) and 0 < len(cid) <= MAX_ID_CHARS:
        return cid
    if isinstance(cid, int) and not isinstance(cid, bool) and abs(cid) <= MAX_ID_INT:
        return cid
    raise BadCommandIdError(f"id must be a string of 1 to {MAX_ID_CHARS} characters or a 64-bit integer")


def safe_command_id(payload: Any) -> CommandId | None:
    try:
        return command_id(payload)
    except BadCommandIdError:
        return None


def cmd_answer(name: str, ok: bool, message: str, cid: CommandId | None = None, **extra: Any) -> dict[str, Any]:
    """The payload of one answer on cmd/result."""
    payload: dict[str, Any] = {"command": name, "ok": ok, "message": message, "ts": round(time.time(), 3)}
    if cid is not None:
        payload["id"] = cid
    payload.update(extra)
    return payload


def config_rejection(version: Any, key: str, message: str) -> dict[str, Any]:
    """The payload of a rejected update on config/result (`version` only when it is an integer)."""
    return {
        "version": version if isinstance(version, int) and not isinstance(version, bool) else None,
        "applied": False,
        "errors": [{"key": key, "message": message}],
    }


@dataclass(frozen=True)
class Request:
    kind: str  # "cmd" | "config" | "reject"
    topic: str
    name: str = ""
    payload: Any = None
    reason: str = ""


def busy_answer(req: Request, waiting: int) -> tuple[str, dict[str, Any]]:
    """What a request the full inbox cannot take is answered: (the answer's topic leaf, payload).

    A command gets `busy` on cmd/result with its id; an update gets config/result with its
    version and applied = false; a message refused unread gets its rejection (it could not have
    been acted on anyway). Exactly one answer each, so a sender can always tell."""
    busy = f"busy: {waiting} requests are waiting on the device; send this one again later"
    if req.kind == "config" or (req.kind == "reject" and "/config/" in req.topic):
        version = req.payload.get("version") if isinstance(req.payload, dict) else None
        message = busy if req.kind == "config" else req.reason
        return "config/result", config_rejection(version, "remote" if req.kind == "config" else "document", message)
    name = req.name or req.topic.rsplit("/", 1)[-1]
    if req.kind == "reject":
        return "cmd/result", cmd_answer(name, False, f"rejected: {req.reason}")
    return "cmd/result", cmd_answer(name, False, busy, safe_command_id(req.payload), busy=True)


class Inbox:
    """Requests from paho's thread to the agent's loop, bounded.

    A flood is answered "busy" at once instead of growing memory: `answer_busy` is called from
    the network thread with each request the inbox cannot take (it must only publish)."""

    def __init__(self, maxsize: int = INBOX_SIZE, answer_busy: Callable[[Request], None] | None = None) -> None:
        self._q: queue.Queue[Request] = queue.Queue(maxsize=maxsize)
        self._answer_busy = answer_busy
        self.busy = 0  # requests answered busy so far

    def waiting(self) -> int:
        return self._q.qsize()

    def _put(self, req: Request) -> None:
        try:
            self._q.put_nowait(req)
        except queue.Full:
            self.busy += 1
            if self._answer_busy is not None:
                self._answer_busy(req)

    def on_cmd(self, topic: str, payload: Any) -> None:
        name = topic.rsplit("/", 1)[-1]
        if name == "result":
            return  # our own answers, when a broker echoes them to a wildcard subscription
        self._put(Request("cmd", topic, name=name, payload=payload))

    def on_config(self, topic: str, payload: Any) -> None:
        self._put(Request("config", topic, payload=payload))

    def reject(self, topic: str, reason: str) -> None:
        self._put(Request("reject", topic, reason=reason))

    def drain(self) -> list[Request]:
        out: list[Request] = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out
