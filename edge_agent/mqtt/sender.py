"""Hands outbox rows to the broker link in order, a window at a time, and removes them once
acknowledged. Runs in the agent's thread (the outbox's SQLite connection lives there); the
acknowledgements arrive from paho's network thread through a queue.

paho itself re-sends its unacknowledged QoS 1 messages after a reconnect; rows handed over
but still unacknowledged after `resend_after_s` of connection are handed over again (at
least once: the consumer drops a duplicate by its seq).

Order survives a reconnect: paho marks the connection up and calls on_connect *before* it
re-sends what was in flight, so a row handed over at that moment would overtake them (the
consumer would see seq 31..40 before 21..30). So on the first pump of a new connection the rows
still unacknowledged from an earlier one are handed over again, first and in order, and newer
rows after them. paho's own copies may arrive too: duplicates, never a newer row first (each of
the two streams is in order). Waiting for paho's acknowledgements instead would stall the outbox
while it is fullest, and paho does not re-send a message it still holds as queued.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

from paho.mqtt.enums import MQTTErrorCode

from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox, Row


@dataclass
class _InFlight:
    row: Row
    since: float
    connection: int  # link.connects when handed over


class OutboxSender:
    def __init__(self, outbox: Outbox, link: MqttLink, *, window: int = 20, resend_after_s: float = 60.0) -> None:
        self.outbox = outbox
        self.link = link
        self.window = window
        self.resend_after_s = resend_after_s
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, _InFlight] = {}  # paho mid → row
        self.sent = 0
        link.on_published = self._acks.put  # called in paho's thread: only queue

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _collect_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            item = self._inflight.pop(mid, None)
            if item is not None:
                self.outbox.in_flight.pop(item.row.id, None)
                self.outbox.ack(item.row.id, item.row.size)

    def pump(self) -> int:
        """Remove what was acknowledged, hand over what fits in the window; the number handed over."""
        self._collect_acks()
        if not self.link.connected:
            return 0
        now = time.monotonic()
        # handed over again, in id order before newer rows: rows unacknowledged for too long, and
        # rows of an earlier connection (see above; an acknowledgement of the old copy is ignored)
        stale = [mid for mid, f in self._inflight.items() if now - f.since > self.resend_after_s]
        connection = self.link.connects
        stale += [mid for mid, f in self._inflight.items() if f.connection != connection and mid not in stale]
        for mid in stale:
            self.outbox.in_flight.pop(self._inflight.pop(mid).row.id, None)
        room = self.window - len(self._inflight)
        if room <= 0 or not self.outbox.has_waiting():
            return 0  # (has_waiting: no query per frame when everything was handed over already)
        busy = {f.row.id for f in self._inflight.values()}
        handed = 0
        for row in self.outbox.pending(exclude=busy, limit=room):
            info = self.link.client.publish(row.topic, row.payload, qos=row.qos)
            # QoS 1/2 without a connection: paho keeps the message and sends it after reconnecting
            kept = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and row.qos > 0
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or kept:
                self._inflight[info.mid] = _InFlight(row, now, connection)
                self.outbox.in_flight[row.id] = row.size
                handed += 1
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the link went down meanwhile: the rest stays pending
        self.sent += handed
        self._collect_acks()
        return handed

    def drain(self, timeout: float) -> bool:
        """Send everything pending (at a clean stop); True when the outbox is empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if not self._inflight and self.outbox.depth().count == 0:
                return True
            if not self.link.connected:
                return False
            time.sleep(0.01)
        return False
