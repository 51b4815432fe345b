"""The outbox sender keeps seq order across a reconnect, against a real mosquitto.

paho marks a new connection up and calls on_connect before it re-sends the messages that were
unacknowledged when the old one broke. A row handed over in that moment would overtake them.
The test holds paho's thread inside on_connect (a hook that waits) to open that moment on
purpose, pumps the sender from the test's thread as the agent's loop would, and checks what a
subscriber receives first (without the fix: 4, 5, 1, 2, 3).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from mqtt_helpers import Broker
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.sender import OutboxSender
from edge_agent.mqtt.topics import Topics

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_rows_unacknowledged_at_a_disconnect_arrive_before_newer_ones(tmp_path: Path) -> None:
    broker = Broker()
    broker.start()
    topics = Topics("edge", "sender-order")
    events = f"{topics.prefix}/{topics.device}/events"
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20)
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port), topics, status_payload=lambda s: {"state": s})
    sender = OutboxSender(outbox, link, window=5)  # room for the newer rows
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sender-order-sub")
    got: list[int] = []
    subscribed = threading.Event()
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload)["seq"])
    sub.on_subscribe = lambda *a: subscribed.set()
    in_connect, go_on = threading.Event(), threading.Event()

    def put(n: int) -> None:
        for _ in range(n):
            outbox.put(events, lambda seq: {"seq": seq}, qos=1, kind="event")

    try:
        link.start()
        assert link.wait_connected(10)
        # 1. the broker hangs: three events are handed over and never acknowledged
        assert broker._pid is not None
        os.kill(broker._pid, signal.SIGSTOP)
        put(3)
        assert sender.pump() == 3
        # 2. it dies; paho keeps the three for the next connection
        broker.hang_then_die(0.0)
        wait(lambda: not link.connected, 30, "the link to notice the broker is gone")
        assert sender.pump() == 0
        # 3. it comes back; paho's thread is held in on_connect, where the resends have not started
        link.on_connected.append(lambda: (in_connect.set(), go_on.wait(20)))
        broker.start()
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        sub.subscribe(events, qos=1)
        assert subscribed.wait(10)
        assert in_connect.wait(30), "the link did not reconnect"
        put(2)
        # the three again (paho will re-send its own copies too), then the two newer ones
        assert sender.pump() == 5
        go_on.set()
        # 4. everything goes out, in order
        wait(lambda: sender.pump() >= 0 and outbox.depth().count == 0 and sender.in_flight == 0, 20, "the outbox")
        wait(lambda: len(set(got)) == 5, 10, "five events at the subscriber")
    finally:
        go_on.set()
        sub.loop_stop()
        sub.disconnect()
        link.stop()
        outbox.close()
        broker.stop()
    first = list(dict.fromkeys(got))  # first arrivals (a duplicate from a resend is allowed)
    assert first == [1, 2, 3, 4, 5], got
