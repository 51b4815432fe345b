"""`mqtt`: sensor rows as JSON messages on a topic, from sensor nodes publishing to a broker.

A message is one row, in one of three forms:

- `[1.5, null, 3]`: a bare array, in model order;
- `{"values": [1.5, null, 3], "ts": 1718000000.25}`: the same, with an optional time;
- `{"age": 52, "bmi": 27.1, "ts": ...}`: by feature name (`source.columns`, or else the
  `[[preprocess.features]]` names); a feature left out is missing.

`null` is a missing value (NaN: the preprocess imputes it or the input guard reports it); `ts`
is the sensor's own time in seconds since the epoch (default: when the message arrived). A
message that is not one of these (not UTF-8 JSON, wrong length, unknown names, a value that is
not a finite number, larger than `mqtt.max_incoming_kb`) is a `SourceProblem` naming its topic.

The source has its own paho client on the broker of `[mqtt]` (same host, TLS and credentials as
the agent's link, its client id suffixed "-source"), so that its subscription and backlog live
and die with the source. paho's network thread receives into a bounded queue; when the model
falls behind, the oldest messages are dropped (newest wins) and the drops are reported. paho
reconnects by itself; while the broker is away, `read()` answers `NO_FRAME_YET`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt

from edge_agent.bounded import quote_part
from edge_agent.bounded_json import MAX_FLOAT_TEXT_CHARS, JsonLimitError, loads_bounded
from edge_agent.config import MqttConfig
from edge_agent.config.source import MqttOptions
from edge_agent.mqtt.link import connect_async, describe_connect_error, load_credentials, load_tls, make_client
from edge_agent.sources.base import MAX_WAIT_S, NO_FRAME_YET, Frame, NoFrameYet, SourceProblem, Stamp

log = logging.getLogger(__name__)

DROP_REPORT_S = 10.0  # drops are summed up in one problem at most this often
# a sensor's ts this far in the future is taken for milliseconds, not seconds
_MAX_TS = 1e11


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    ts: float  # arrival, wall clock
    mono: float  # arrival, monotonic


@dataclass(frozen=True)
class Row:
    values: npt.NDArray[np.float64]
    ts: float | None


class RowParser:
    """JSON message → a row of float64 values in model order, or a one-line reason."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._index = {n: i for i, n in enumerate(names)}

    def parse(self, payload: bytes) -> Row | str:
        doc = _json_document(payload)
        if isinstance(doc, _Unreadable):
            return doc.reason
        if isinstance(doc, list):
            return self._positional(doc, None)
        if not isinstance(doc, dict):
            return f'expected a JSON array, {{"values": [...]}} or an object of feature values, got {_kind(doc)}'
        ts = self._take_ts(doc)
        if isinstance(ts, str):
            return ts
        if "values" in doc and "values" not in self._index:
            return self._values_form(doc, ts)
        return self._by_name(doc, ts)

    def _take_ts(self, doc: dict[str, Any]) -> float | str | None:
        """The sensor's time, taken out of `doc` (None: not given, or `ts` is a feature), or why it is not one."""
        if "ts" not in doc or "ts" in self._index:
            return None
        t = doc.pop("ts")
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < float(t) < _MAX_TS:
            return f"ts: {_show(t)} is not a time in seconds since the epoch"
        return float(t)

    def _values_form(self, doc: dict[str, Any], ts: float | None) -> Row | str:
        """`{"values": [...]}`, with nothing else beside it (the ts is already taken)."""
        extra = sorted(k for k in doc if k != "values")
        if extra:
            return f"unexpected key(s) beside values: {quote_part(', '.join(map(repr, extra[:5])))}"
        if not isinstance(doc["values"], list):
            return f"values: expected an array, got {_kind(doc['values'])}"
        return self._positional(doc["values"], ts)

    def _positional(self, items: list[Any], ts: float | None) -> Row | str:
        if self.names and len(items) != len(self.names):
            return f"{len(items)} values, the model takes {len(self.names)} ({quote_part(', '.join(self.names))})"
        if not items:
            return "no values"
        out = np.empty(len(items), dtype=np.float64)
        for i, v in enumerate(items):
            label = f"value {i + 1}" + (f" ({self.names[i]!r})" if self.names else "")
            x = _number(v)
            if isinstance(x, str):
                return f"{label}: {x}"
            out[i] = x
        return Row(out, ts)

    def _by_name(self, doc: dict[str, Any], ts: float | None) -> Row | str:
        if not self.names:
            return "values by name need feature names ([[preprocess.features]] or source.columns)"
        unknown = sorted(k for k in doc if k not in self._index)
        if unknown:
            return (
                f"unknown feature(s) {quote_part(', '.join(map(repr, unknown[:5])))} "
                f"(expected: {quote_part(', '.join(self.names))})"
            )
        if not doc:
            return "no values"
        out = np.full(len(self.names), math.nan, dtype=np.float64)  # a feature left out is missing
        for name, v in doc.items():
            x = _number(v)
            if isinstance(x, str):
                return f"{quote_part(repr(name))}: {x}"
            out[self._index[name]] = x
        return Row(out, ts)


@dataclass(frozen=True)
class _Unreadable:
    reason: str


def _json_document(payload: bytes) -> Any:
    """The message's JSON document, or `_Unreadable` (a document may itself be a string)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return _Unreadable(f"message is not UTF-8 text (byte {err.start})")
    try:
        # numbers and nesting within limits (a 5,000-digit integer is a reason, not a ValueError);
        # every value becomes a float, whose range is judged by the row's parser
        return loads_bounded(text, max_number_chars=MAX_FLOAT_TEXT_CHARS)
    except JsonLimitError as err:
        return _Unreadable(f"message {err}")


def _number(v: Any) -> float | str:
    """A finite float, NaN for null, or why not."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"{_show(v)} is not a number"
    try:
        x = float(v)
    except OverflowError:  # a JSON integer beyond float range
        x = math.inf
    if math.isnan(x):
        return f"{_show(v)} is not a finite number (a missing value is null)"
    return x if math.isfinite(x) else f"{_show(v)} is not a finite number"


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _show(v: Any) -> str:
    text = json.dumps(v)  # as the sender wrote it (NaN and Infinity included)
    return text if len(text) <= 30 else text[:27] + "..."


class MqttSensorSource:
    def __init__(
        self, opts: MqttOptions, broker: MqttConfig, *, client_id: str, feature_names: tuple[str, ...] = ()
    ) -> None:
        self._topic = opts.topic
        self._qos = opts.qos
        self._broker = broker
        self.name = f"mqtt:{opts.topic}"
        self._parser = RowParser(tuple(opts.columns or feature_names))
        self._limit = broker.max_incoming_kb * 1024
        self._stamp = Stamp()
        self._capacity = opts.queue
        self._queue: deque[_Message | SourceProblem] = deque()
        self._cond = threading.Condition()
        self._dropped = 0  # messages dropped and not reported yet
        self._next_drop_report = 0.0
        # touched in paho's network thread only
        self._tls_ready = broker.tls is None
        self._logged: set[str] = set()
        # set while the broker has acknowledged the subscription (for status and tests)
        self.subscribed = threading.Event()
        self._client = make_client(broker, client_id)
        self._client.before_connect = self._before_connect
        self._client.connect_failed = self._connect_failed
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *_: self.subscribed.clear()
        self._client.on_message = self._on_message
        connect_async(self._client, broker)
        self._client.loop_start()

    # ---- paho's network thread ---------------------------------------------------------------
    def _before_connect(self) -> None:
        if not self._tls_ready:
            load_tls(self._client, self._broker)
            self._tls_ready = True
        load_credentials(self._client, self._broker)

    def _log_once(self, cause: str) -> None:
        # the agent's own link reports the same broker's outages as events; here a log line is enough
        if cause not in self._logged:
            self._logged.add(cause)
            log.warning("source %s: %s; retrying", self.name, cause)

    def _connect_failed(self, err: OSError) -> None:
        self._log_once(describe_connect_error(err, self._broker))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._log_once(f"the broker at {self._broker.host}:{self._broker.port} refused the connection: {reason}")
            return
        self._logged.clear()
        log.info("source %s: connected to %s:%d, subscribing", self.name, self._broker.host, self._broker.port)
        # a clean session: subscribe again on every connect
        client.subscribe(self._topic, qos=self._qos)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
        refused = [code for code in codes if getattr(code, "is_failure", False)]
        for code in refused:
            self._put(SourceProblem(self._topic, f"the broker refused the subscription: {code}"))
        if not refused:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > self._limit:
            item: _Message | SourceProblem = SourceProblem(
                msg.topic, f"message of {len(msg.payload)} bytes exceeds mqtt.max_incoming_kb ({self._limit} bytes)"
            )
        else:
            item = _Message(msg.topic, bytes(msg.payload), time.time(), time.monotonic())
        self._put(item)

    def _put(self, item: _Message | SourceProblem) -> None:
        with self._cond:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()  # newest wins: a late row is worth less than a current one
                self._dropped += 1
            self._queue.append(item)
            self._cond.notify()

    # ---- the agent's thread ------------------------------------------------------------------
    def read(self) -> Frame | SourceProblem | NoFrameYet | None:
        with self._cond:
            now = time.monotonic()
            if not self._queue and not (self._dropped and now >= self._next_drop_report):
                self._cond.wait(MAX_WAIT_S)
                now = time.monotonic()
            dropped = self._dropped if now >= self._next_drop_report else 0
            self._dropped -= dropped
            item = self._queue.popleft() if self._queue and not dropped else None
        if dropped:
            self._next_drop_report = now + DROP_REPORT_S
            return SourceProblem(
                self._topic,
                f"{dropped} message(s) dropped: they came faster than the model takes them "
                f"(source.mqtt_queue = {self._capacity})",
            )
        if item is None:
            return NO_FRAME_YET
        if isinstance(item, SourceProblem):
            return item
        row = self._parser.parse(item.payload)
        if isinstance(row, str):
            return SourceProblem(item.topic, row)
        seq, _, _ = self._stamp.next()
        return Frame(
            seq=seq,
            ts=row.ts if row.ts is not None else item.ts,
            mono=item.mono,
            source=item.topic,
            values=row.values,
            names=self._parser.names,
        )

    def release(self, frame: Frame) -> None:
        """Nothing to give back: each row is a fresh small vector."""

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._queue.clear()
