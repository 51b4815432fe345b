"""A broker that refuses a client sends its CONNACK and closes at once; now and then the close
overtakes the CONNACK (a reset drops the unread answer) and the client sees only a connection
closed before any answer. CI met this against mosquitto's TLS listener with a wrong password.

mosquitto cannot be made to lose that race on demand, so a minimal MQTT 5 server on loopback plays
the three attempts in order: a refusal (CONNACK "Not authorized"), a connection reset right after
the CONNECT, then a success. The link must keep the broker's own reason for the outage, log it
once, and count both failed attempts.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from edge_agent.config import MqttConfig
from edge_agent.mqtt.link import MqttLink
from edge_agent.mqtt.topics import Topics

CONNACK_NOT_AUTHORIZED = bytes([0x20, 0x03, 0x00, 0x87, 0x00])  # MQTT 5: flags, reason 0x87, no properties
CONNACK_SUCCESS = bytes([0x20, 0x03, 0x00, 0x00, 0x00])


def read_packet(conn: socket.socket) -> bytes:
    """One MQTT control packet (fixed header, variable length, body)."""
    head = conn.recv(1)
    if not head:
        return b""
    length, shift = 0, 0
    while True:
        b = conn.recv(1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return head + body


class ScriptedBroker:
    """Answers the n-th connection as told: "refuse", "reset" or "accept" (then holds it open)."""

    def __init__(self, script: list[str]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.connects: list[bytes] = []
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for action in self.script:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            packet = read_packet(conn)
            self.connects.append(packet)
            if action == "refuse":
                conn.sendall(CONNACK_NOT_AUTHORIZED)
                conn.close()
            elif action == "reset":
                # SO_LINGER 0: close() sends RST, as when a reset overtakes the CONNACK
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                conn.sendall(CONNACK_SUCCESS)
                self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self._held:
            c.close()


@pytest.fixture
def scripted() -> Iterator[ScriptedBroker]:
    b = ScriptedBroker(["refuse", "reset", "accept"])
    yield b
    b.close()


def test_a_reset_after_a_refusal_keeps_the_brokers_reason_and_logs_it_once(
    scripted: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt.link")
    link = MqttLink(
        MqttConfig(host="127.0.0.1", port=scripted.port), Topics("edge", "refusal"), status_payload=lambda s: {"s": s}
    )
    try:
        link.start()
        assert link.wait_connected(20), f"no connection after {len(scripted.connects)} attempt(s)"
    finally:
        link.stop(timeout=0.5)
    assert len(scripted.connects) == 3 and all(p[:1] == b"\x10" for p in scripted.connects)  # three CONNECTs
    assert link.outage is not None
    assert link.outage.failed_attempts == 2
    assert "refused the connection: Not authorized" in link.outage.last_error, link.outage
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "refused the connection" in warnings[0], warnings


def test_a_close_without_an_answer_on_its_own_is_reported_as_such(caplog: pytest.LogCaptureFixture) -> None:
    broker = ScriptedBroker(["reset", "accept"])
    caplog.set_level(logging.INFO, logger="edge_agent.mqtt.link")
    link = MqttLink(
        MqttConfig(host="127.0.0.1", port=broker.port), Topics("edge", "refusal"), status_payload=lambda s: {"s": s}
    )
    try:
        link.start()
        assert link.wait_connected(20)
    finally:
        link.stop(timeout=0.5)
        broker.close()
    assert link.outage is not None and link.outage.failed_attempts == 1
    assert "closed the connection before accepting it (is that port a TLS listener?)" in link.outage.last_error
