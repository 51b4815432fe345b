"""The paho-mqtt 2 client: its own network thread, a Last Will, retained status.

paho's loop thread reconnects by itself (with `reconnect_delay_set` backoff); this class
only adds what the agent needs on top: the status topic as Last Will, `online` on every
connect, `offline` on a clean stop, and JSON payloads with a per-topic `seq`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.mqtt.topics import Topics
from edge_agent.secrets import read_secret

log = logging.getLogger(__name__)


def encode(payload: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN must never leave the device disguised as JSON
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        *,
        status_payload: Callable[[str], dict[str, Any]],
        initial_state: str = "online",
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self._status_payload = status_payload
        self._connected = threading.Event()
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        # what `_on_connect` announces until `publish_status` says otherwise: the owner's real
        # state, so that an agent still without a model never claims `online` on connect
        self._state = initial_state
        self.last_error: str | None = None
        v5 = cfg.protocol == "5"
        self._v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edge-agent-{topics.device}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport=cfg.transport,
            **({} if v5 else {"clean_session": True}),
        )
        if cfg.username:
            password = read_secret(cfg.password_file) if cfg.password_file else None
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            self.client.tls_set(ca_certs=cfg.tls.ca, certfile=cfg.tls.cert, keyfile=cfg.tls.key)
            if cfg.tls.insecure:
                self.client.tls_insecure_set(True)
        self.client.will_set(topics.status, encode(status_payload("offline")), qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        # hooks for the owner: called from paho's network thread, so they must be quick
        self.on_connected: list[Callable[[], None]] = []
        self.on_published: Callable[[int], None] | None = None
        self._handlers: dict[str, Callable[[str, Any], None]] = {}  # topic filter → handler(topic, parsed JSON)
        self._rejects: dict[str, Callable[[str, str], None]] = {}  # topic filter → reject(topic, reason)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("%s", self.last_error)
            return
        self._connected.set()
        self.last_error = None
        log.info("connected to %s:%s", self.cfg.host, self.cfg.port)
        self.publish_status(self._state)
        # subscriptions do not survive a clean start: renew them on every connect
        for topic_filter in self._handlers:
            client.subscribe(topic_filter, qos=1)
        for hook in self.on_connected:
            hook()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # QoS 1: the broker's PUBACK; QoS 0: the message left the socket
        if self.on_published is not None:
            self.on_published(mid)

    def subscribe(
        self, topic_filter: str, handler: Callable[[str, Any], None], reject: Callable[[str, str], None]
    ) -> None:
        """Route JSON messages on `topic_filter` to `handler`; bad ones to `reject` with the reason."""
        self._handlers[topic_filter] = handler
        self._rejects[topic_filter] = reject
        if self.connected:
            self.client.subscribe(topic_filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # never let an exception escape into paho's network thread: it would end the loop
        try:
            for topic_filter, handler in self._handlers.items():
                if mqtt.topic_matches_sub(topic_filter, msg.topic):
                    self._dispatch(msg, handler, self._rejects[topic_filter])
                    return
        except Exception:
            log.exception("handling a message on %s failed", msg.topic)

    def _dispatch(
        self, msg: mqtt.MQTTMessage, handler: Callable[[str, Any], None], reject: Callable[[str, str], None]
    ) -> None:
        limit = self.cfg.max_incoming_kb * 1024
        if len(msg.payload) > limit:
            reject(msg.topic, f"message of {len(msg.payload)} bytes exceeds mqtt.max_incoming_kb ({limit} bytes)")
            return
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError as err:
            reject(msg.topic, f"message is not UTF-8 text (byte {err.start})")
            return
        if not text.strip():
            handler(msg.topic, None)  # an empty message: a command without arguments
            return
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            reject(msg.topic, f"message is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}")
            return
        handler(msg.topic, parsed)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        if getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"
            log.warning("broker link lost (%s); reconnecting", reason)

    def start(self) -> None:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self.client.connect_async(
                self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=True, properties=props
            )
        else:
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def next_seq(self, topic: str) -> int:
        with self._seq_lock:
            n = self._seq.get(topic, 0) + 1
            self._seq[topic] = n
            return n

    def publish(
        self, topic: str, payload: dict[str, Any] | bytes, *, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        data = payload if isinstance(payload, bytes) else encode(payload)
        return self.client.publish(topic, data, qos=qos, retain=retain)

    def publish_status(self, state: str) -> None:
        self._state = state
        self.publish(self.topics.status, self._status_payload(state), qos=1, retain=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, wait for it to leave, disconnect."""
        if self.connected:
            info = self.publish(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()
