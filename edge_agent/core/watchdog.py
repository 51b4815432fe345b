"""When systemd's watchdog is pinged: WATCHDOG=1 at half of WATCHDOG_USEC, only while frames
really flow through inference, or while the agent is idle by design (paused, source finished,
no model yet, a watched folder or topic with nothing new). A hung invoke or capture blocks the
loop, so the pings stop and systemd restarts the service."""

from __future__ import annotations

from edge_agent.service import Notifier


class Watchdog:
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.off = False  # a restart was asked for: no more pings, systemd's watchdog backs it up
        self.last_inference_at = -1e18
        self._next_ping = 0.0

    def inferred(self, now: float) -> None:
        self.last_inference_at = now

    def due(self, now: float) -> bool:
        """Whether a ping is due now, if the agent is healthy (see `tick`)."""
        interval = self.notifier.watchdog_interval_s
        return interval is not None and not self.off and now >= self._next_ping

    def flowing(self, now: float, *, fps: float | None) -> bool:
        interval = self.notifier.watchdog_interval_s or 0.0
        window = max(2 * interval, 3.0 / fps if fps else 0.0)
        return now - self.last_inference_at <= window

    def tick(self, now: float, *, fps: float | None, idle_by_design: bool) -> bool:
        """Ping when due and frames flow (or idle by design); returns whether it pinged."""
        if not self.due(now):
            return False
        if not (self.flowing(now, fps=fps) or idle_by_design):
            return False
        self.notifier.watchdog()
        self._next_ping = now + (self.notifier.watchdog_interval_s or 0.0)
        return True
