"""Fault and notable events: one value type, and merging of repeats into summaries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True)
class Event:
    kind: str
    severity: Severity
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    ts: float = field(default_factory=time.time)

    def payload(self, seq: int) -> dict[str, Any]:
        return {
            "seq": seq,
            "ts": round(self.ts, 3),
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "detail": self.detail,
            "count": self.count,
        }


class EventMerger:
    """The first event of a kind goes out at once; repeats within `interval_s` are held and
    go out as one summary whose `count` is the number merged, so counts always add up."""

    def __init__(self, interval_s: float, clock: Any = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last_sent: dict[str, float] = {}
        self._held: dict[str, tuple[Event, int]] = {}

    def offer(self, ev: Event) -> list[Event]:
        """Events to publish now (possibly none) for this new event."""
        now = self._clock()
        out = self.due(now)
        last = self._last_sent.get(ev.kind)
        if self._interval <= 0 or last is None or now - last >= self._interval:
            held = self._held.pop(ev.kind, None)
            if held is not None:
                out.append(_summary(held))
            self._last_sent[ev.kind] = now
            out.append(ev)
            return out
        _, n = self._held.get(ev.kind, (ev, 0))
        self._held[ev.kind] = (ev, n + ev.count)
        return out

    def due(self, now: float | None = None) -> list[Event]:
        """Summaries whose interval has passed."""
        now = self._clock() if now is None else now
        out: list[Event] = []
        for kind in list(self._held):
            if now - self._last_sent.get(kind, 0.0) >= self._interval:
                out.append(_summary(self._held.pop(kind)))
                self._last_sent[kind] = now
        return out

    def flush(self) -> list[Event]:
        out = [_summary(h) for h in self._held.values()]
        self._held.clear()
        return out


def _summary(held: tuple[Event, int]) -> Event:
    ev, n = held
    return Event(ev.kind, ev.severity, f"{ev.message} (repeated {n}×)" if n > 1 else ev.message, ev.detail, n, ev.ts)
