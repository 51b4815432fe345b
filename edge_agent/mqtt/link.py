"""The paho-mqtt 2 client: its own network thread, a Last Will, retained status.

paho's loop thread reconnects by itself (with `reconnect_delay_set` backoff); this class
only adds what the agent needs on top: the status topic as Last Will, `online` on every
connect, `offline` on a clean stop, and JSON payloads with a per-topic `seq`.

Connection errors: before every attempt the password file is read again (a corrected or
rotated secret is used without a restart) and the TLS files are loaded if they could not be
yet; no attempt is ever made without the TLS the config asks for. Each distinct cause is
logged once per outage, in one line; when the link is up again, `outage` summarises what
failed for the `on_connected` hooks. paho cannot swap the CA of a configured TLS context, so
a corrected `mqtt.tls.ca` file takes effect on the next start of the agent.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.bounded import MAX_CONFIG_BYTES, check_regular
from edge_agent.bounded_json import JsonLimitError, loads_bounded
from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError
from edge_agent.mqtt.topics import Topics
from edge_agent.secrets import read_secret

log = logging.getLogger(__name__)


RECONNECT_MIN_S = 1
RECONNECT_JITTER_S = 2.0
RECONNECT_MAX_S = 30  # a device back on the network should not wait a minute for its next try
# CONNACK reason codes that mean "wrong or missing credentials" (MQTT 5; 3.1.1's 4 and 5 map to these)
_AUTH_CODES = (134, 135)  # Bad user name or password, Not authorized


def encode(payload: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN must never leave the device disguised as JSON
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class ConnectSetupError(OSError):
    """A connection attempt that could not even start: an unreadable password or TLS file."""


@dataclass(frozen=True)
class Outage:
    """What went wrong between two connections: the last cause and how many attempts failed."""

    last_error: str
    failed_attempts: int
    down_s: float


class _Client(mqtt.Client):
    """paho's client with a hook before each connection attempt and one for its failure.

    paho's `on_connect_fail` does not say why an attempt failed; `reconnect` sees the exception.
    Both hooks run in paho's network thread and must not raise anything but OSError.
    """

    before_connect: Callable[[], None] | None = None
    connect_failed: Callable[[OSError], None] | None = None
    # set after a failed attempt, cleared on connect: a random pause before each retry, so that
    # a fleet whose broker restarts does not come back in one synchronized wave
    jitter_max_s: float = 0.0

    def reconnect(self) -> MQTTErrorCode:
        if self.jitter_max_s > 0:
            time.sleep(random.uniform(0.0, self.jitter_max_s))
        try:
            if self.before_connect is not None:
                self.before_connect()
            return super().reconnect()
        except OSError as err:
            if self.connect_failed is not None:
                self.connect_failed(err)
            raise


# ---- helpers shared by every client of the agent (the link, the `mqtt` source) -------------
def make_client(cfg: MqttConfig, client_id: str) -> _Client:
    """A paho client for `cfg`'s protocol and transport, a clean session, paho's reconnect backoff."""
    v5 = cfg.protocol == "5"
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        transport=cfg.transport,
        **({} if v5 else {"clean_session": True}),
    )
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
    return client


def connect_async(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Start connecting (paho's loop thread finishes it): no session is kept on the broker."""
    if cfg.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=True, properties=props)
    else:
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)


def load_tls(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Set up `cfg.tls` on the client (once: paho refuses a second time); ConnectSetupError if it cannot."""
    if cfg.tls is None:
        return
    try:
        # OpenSSL reads these itself: refuse first what would hang (a FIFO) or never end (/dev/zero)
        for name in ("ca", "cert", "key"):
            path = getattr(cfg.tls, name)
            if path is not None:
                check_regular(path, what=f"mqtt.tls.{name}", max_bytes=MAX_CONFIG_BYTES)
        client.tls_set(ca_certs=cfg.tls.ca, certfile=cfg.tls.cert, keyfile=cfg.tls.key)
    except (OSError, ValueError) as err:
        files = ", ".join(f"{k} = {v}" for k, v in cfg.tls.model_dump().items() if isinstance(v, str))
        detail = getattr(err, "strerror", None) or getattr(err, "reason", None) or err
        raise ConnectSetupError(f"mqtt.tls: cannot load the TLS files ({files}): {detail}") from None
    if cfg.tls.insecure:
        client.tls_insecure_set(True)


def load_credentials(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Read the password file again (a rotated secret is used without a restart); ConnectSetupError if it cannot."""
    if cfg.username:
        try:
            password = read_secret(cfg.password_file) if cfg.password_file else None
        except ConfigError as err:
            raise ConnectSetupError(f"mqtt.password_file: {err}") from None
        client.username_pw_set(cfg.username, password)


def describe_connect_error(  # noqa: PLR0911 - one line per cause, most specific first (SSLCertVerificationError is an SSLError)
    err: OSError, cfg: MqttConfig
) -> str:
    """One line, naming the cause and what to check; never the secret."""
    where, tls = f"{cfg.host}:{cfg.port}", cfg.tls
    if isinstance(err, ConnectSetupError):
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        ca = tls.ca if tls is not None and tls.ca else "the system's CAs"
        return (
            f"TLS certificate verification of the broker at {where} failed: {err.verify_message}; "
            f"mqtt.tls.ca ({ca}) is not the CA that signed the broker's certificate, or the certificate "
            f"does not name {cfg.host} (a corrected mqtt.tls.ca takes effect when the agent restarts)"
        )
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake with the broker at {where} failed: {err.reason or err} (is that port a TLS listener?)"
    if isinstance(err, ConnectionRefusedError):
        return f"cannot reach the broker at {where}: connection refused (no broker listening on that port)"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve mqtt.host {cfg.host!r}: {err.strerror or err}"
    if isinstance(err, TimeoutError):
        return f"cannot reach the broker at {where}: timed out"
    if isinstance(err, ConnectionResetError) and tls is not None:
        return f"the broker at {where} reset the connection during the TLS handshake (is that port a TLS listener?)"
    return f"cannot connect to the broker at {where}: {err.strerror or err}"


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
        # successful connects so far: what was handed to paho on an earlier connection is re-sent
        # by paho itself on the next one (see OutboxSender)
        self.connects = 0
        # what `_on_connect` announces until `publish_status` says otherwise: the owner's real
        # state, so that an agent still without a model never claims `online` on connect
        self._state = initial_state
        self.last_error: str | None = None
        # the connection errors of the current outage (all touched in paho's thread only)
        self.outage: Outage | None = None  # the outage that the last successful connect ended
        self._failed_attempts = 0
        self._attempt_failed = False
        self._down_since: float | None = None
        self._logged: set[str] = set()
        self._refused: str | None = None  # the broker's own reason (CONNACK) for refusing, in this outage
        self._tls_ready = cfg.tls is None
        self.client = make_client(cfg, cfg.client_id or f"edge-agent-{topics.device}")
        # credentials and TLS are set up in `_before_connect`, before every attempt
        self.client.before_connect = self._before_connect
        self.client.connect_failed = self._connect_failed
        self.client.will_set(topics.status, encode(status_payload("offline")), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        # hooks for the owner: called from paho's network thread, so they must be quick
        self.on_connected: list[Callable[[], None]] = []
        self.on_published: Callable[[int], None] | None = None
        self._handlers: dict[str, Callable[[str, Any], None]] = {}  # topic filter → handler(topic, parsed JSON)
        self._rejects: dict[str, Callable[[str, str], None]] = {}  # topic filter → reject(topic, reason)
        self._no_retained: set[str] = set()  # topic filters whose retained deliveries are ignored

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ---- connection errors -----------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _before_connect(self) -> None:
        """Load what may have failed or changed since the last attempt; raise ConnectSetupError."""
        self._attempt_failed = False
        if not self._tls_ready:
            load_tls(self.client, self.cfg)
            self._tls_ready = True
        load_credentials(self.client, self.cfg)

    def _describe(self, err: OSError) -> str:
        return describe_connect_error(err, self.cfg)

    def _connect_failed(self, err: OSError) -> None:
        self._fail(self._describe(err))

    def _fail(self, cause: str) -> None:
        """An attempt failed: count it, and log the cause once per outage."""
        self._failed_attempts += 1
        self._attempt_failed = True
        self.client.jitter_max_s = RECONNECT_JITTER_S
        self._note(cause)

    def _note(self, cause: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.last_error = cause
        if cause not in self._logged:
            self._logged.add(cause)
            log.warning("%s; retrying (backoff up to %d s)", cause, RECONNECT_MAX_S)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            hint = ""
            if getattr(reason, "value", None) in _AUTH_CODES:
                hint = (
                    " (check mqtt.username and the password in mqtt.password_file)"
                    if self.cfg.username
                    else " (the broker wants credentials: set mqtt.username and mqtt.password_file)"
                )
            self._refused = f"the broker at {self._where} refused the connection: {reason}{hint}"
            self._fail(self._refused)
            return
        self.connects += 1  # before `connected` is seen set
        self._connected.set()
        self.client.jitter_max_s = 0.0
        if self._down_since is not None and self.last_error is not None:
            self.outage = Outage(self.last_error, self._failed_attempts, time.monotonic() - self._down_since)
            log.info(
                "connected to %s after %d failed attempt(s) in %.1f s",
                self._where,
                self._failed_attempts,
                self.outage.down_s,
            )
        else:
            self.outage = None
            log.info("connected to %s", self._where)
        self.last_error = None
        self._refused = None
        self._failed_attempts = 0
        self._down_since = None
        self._logged.clear()
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
        self,
        topic_filter: str,
        handler: Callable[[str, Any], None],
        reject: Callable[[str, str], None],
        *,
        accept_retained: bool = True,
    ) -> None:
        """Route JSON messages on `topic_filter` to `handler`; bad ones to `reject` with the reason.

        `accept_retained=False`: a message delivered with the retain flag is dropped with a log
        line. The broker sets that flag only on a message it kept and hands to a new subscription
        (MQTT 3.1.1 3.3.1-8/9; MQTT 5 as well, since these subscriptions do not ask for
        retain-as-published): stored state, replayed at every start and reconnect, not something
        sent to this agent now. A live message is delivered without the flag, retained or not."""
        self._handlers[topic_filter] = handler
        self._rejects[topic_filter] = reject
        if not accept_retained:
            self._no_retained.add(topic_filter)
        if self.connected:
            self.client.subscribe(topic_filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # never let an exception escape into paho's network thread: it would end the loop
        try:
            for topic_filter, handler in self._handlers.items():
                if mqtt.topic_matches_sub(topic_filter, msg.topic):
                    if msg.retain and topic_filter in self._no_retained:
                        self._ignore_retained(msg)
                        return
                    self._dispatch(msg, handler, self._rejects[topic_filter])
                    return
        except Exception:
            log.exception("handling a message on %s failed", msg.topic)

    def _ignore_retained(self, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # the broker never delivers an empty retained message; nothing to say if one did
        log.warning(
            "ignoring the retained message on %s (%d bytes): a retained command is not a command, it would "
            "act at every start and reconnect; send commands without retain, and clear this one by publishing "
            "an empty retained message to %s",
            msg.topic,
            len(msg.payload),
            msg.topic,
        )

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
            # numbers and nesting within limits: a 5,000-digit integer or 100,000 brackets is a
            # one-line rejection, never an exception out of the parser
            parsed = loads_bounded(text)
        except JsonLimitError as err:
            reject(msg.topic, f"message {err}")
            return
        handler(msg.topic, parsed)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not getattr(reason, "is_failure", False):
            return  # our own disconnect
        self.client.jitter_max_s = RECONNECT_JITTER_S  # a broker restart: do not all return at once
        if was_connected:
            self._note(f"lost the link to the broker at {self._where} ({reason})")
        elif not self._attempt_failed:
            if self._refused is not None:
                # a broker that refuses a client sends its CONNACK and closes at once; now and then
                # the close overtakes the CONNACK (a reset drops the unread answer). The broker gave
                # its reason already in this outage: the attempt counts, the reason stays that one.
                self._fail(self._refused)
                return
            # closed without a CONNACK: a TLS listener reached in clear text, or a refused client certificate
            hint = "a client certificate it refused?" if self.cfg.tls else "is that port a TLS listener?"
            self._fail(f"the broker at {self._where} closed the connection before accepting it ({hint})")

    def start(self) -> None:
        connect_async(self.client, self.cfg)
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self, topic: str, payload: dict[str, Any] | bytes, *, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        data = payload if isinstance(payload, bytes) else encode(payload)
        return self.client.publish(topic, data, qos=qos, retain=retain)

    def publish_status(self, state: str) -> None:
        self._state = state
        self.publish(self.topics.status, self._status_payload(state), qos=1, retain=True)
        # paho sends the Will with the next CONNECT: keep it describing the current model
        self.client.will_set(self.topics.status, encode(self._status_payload("offline")), qos=1, retain=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, wait for it to leave, disconnect."""
        if self.connected:
            info = self.publish(self.topics.status, self._status_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()
