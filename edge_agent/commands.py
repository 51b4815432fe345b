"""Incoming commands (`P/D/cmd/<name>`) and config updates, queued from the network thread.

paho calls the handlers in its own thread; they only parse and queue. The agent's loop
drains the queue between two frames, so commands never race the pipeline.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

COMMANDS = ("snapshot", "reload", "pause", "resume", "selftest", "mask")


@dataclass(frozen=True)
class Request:
    kind: str  # "cmd" | "config" | "reject"
    topic: str
    name: str = ""
    payload: Any = None
    reason: str = ""


class Inbox:
    def __init__(self, maxsize: int = 64) -> None:
        # bounded: a flood of commands is answered "busy" instead of growing memory
        self._q: queue.Queue[Request] = queue.Queue(maxsize=maxsize)
        self.dropped = 0

    def _put(self, req: Request) -> None:
        try:
            self._q.put_nowait(req)
        except queue.Full:
            self.dropped += 1

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
