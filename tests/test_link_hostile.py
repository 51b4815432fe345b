"""Hostile messages on the agent's inbound topics (issue 16, items 7 and 10), against the real
agent and mosquitto: a retained command is not a command (it would act at every start and
reconnect), and a number beyond the parser's limits is a one-line rejection, not a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import AgentProcess, Collector, Message, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.bounded_json import MAX_DEPTH, MAX_NUMBER_CHARS, JsonLimitError, loads_bounded
from edge_agent.broker import LocalBroker


def publish(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def kick(port: int, client_id: str) -> None:
    """Take over the agent's session: the broker drops the agent, which reconnects and subscribes anew."""
    thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    thief.connect("127.0.0.1", port)
    thief.loop_start()
    time.sleep(0.5)
    thief.disconnect()
    thief.loop_stop()


def agent_config(tmp_path: Path, device: str, port: int, protocol: str) -> Path:
    return write_config(
        tmp_path,
        device=device,
        port=port,
        sections={
            "source": {"kind": "synthetic", "width": 28, "height": 28, "fps": 20},
            "model": {"path": str(BUNDLED / "digits_uint8.tflite"), "interpreter": INTERPRETER},
        },
        mqtt_extra={"protocol": protocol},
    )


def results_after(col: Collector, mark: int, n: int, timeout: float) -> None:
    """Wait for `n` results among the messages from index `mark` on."""
    seen = 0

    def nth_result(m: Message) -> bool:
        nonlocal seen
        seen += m.leaf == "results"  # wait_for shows each message once
        return seen >= n

    col.wait_for(nth_result, timeout, f"{n} results", start=mark)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_retained_pause_is_ignored_at_start_and_reconnect_a_live_one_pauses(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector, protocol: str
) -> None:
    pause = f"edge/{device}/cmd/pause"
    publish(mosquitto.port, pause, b"{}", retain=True)  # an empty retained message would clear it: "{}"
    try:
        with AgentProcess(agent_config(tmp_path, device, mosquitto.port, protocol)) as agent:
            col.wait_status("online", 30)
            results_after(col, 0, 20, 30)  # one second of results at 20 fps: not paused
            kick(mosquitto.port, f"edge-agent-{device}")  # a reconnect delivers the retained pause again
            mark = col.mark()
            col.wait_status("online", 30, after=mark)
            results_after(col, mark, 20, 30)
            assert not [a for a in col.on("cmd/result") if a.get("command") == "pause"], col.on("cmd/result")
            out = agent.output
            assert out.count(f"ignoring the retained message on {pause}") >= 2, out[-3000:]
            assert "Traceback" not in out
            # a live pause still pauses
            mark = col.mark()
            publish(mosquitto.port, pause, b"")
            ans = col.wait_for(lambda m: m.leaf == "cmd/result", 15, "the pause answer", start=mark)
            assert ans.payload["command"] == "pause" and ans.payload["ok"] is True, ans.payload
            time.sleep(0.3)  # a frame in flight when the pause came may still be published
            quiet = col.mark()
            time.sleep(1.5)
            assert not [m for m in col.snapshot()[quiet:] if m.leaf == "results"], "results while paused"
            assert agent.running()
    finally:
        publish(mosquitto.port, pause, b"", retain=True)  # clear it: the broker is shared by the session


def test_a_5000_digit_integer_is_a_one_line_rejection(
    tmp_path: Path, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    huge = b'{"n": ' + b"9" * 5000 + b"}"
    with AgentProcess(agent_config(tmp_path, device, mosquitto.port, "5")) as agent:
        col.wait_status("online", 30)
        col.wait_for(lambda m: m.leaf == "results", 30, "results")
        mark = col.mark()
        publish(mosquitto.port, f"edge/{device}/cmd/selftest", huge)
        ans = col.wait_for(lambda m: m.leaf == "cmd/result", 15, "the rejection", start=mark).payload
        assert ans["command"] == "selftest" and ans["ok"] is False, ans
        assert ans["message"].startswith("rejected: message holds a number of 5000 digits"), ans
        assert "\n" not in ans["message"] and len(ans["message"]) < 200, ans
        mark = col.mark()
        publish(mosquitto.port, f"edge/{device}/config/set", huge)
        ans = col.wait_for(lambda m: m.leaf == "config/result", 15, "the update rejection", start=mark).payload
        assert ans["applied"] is False and "5000 digits" in ans["errors"][0]["message"], ans
        # still serving commands, still producing results
        mark = col.mark()
        publish(mosquitto.port, f"edge/{device}/cmd/selftest", b"")
        ans = col.wait_for(lambda m: m.leaf == "cmd/result", 15, "a selftest answer", start=mark).payload
        assert ans["command"] == "selftest" and "rejected" not in ans["message"], ans
        results_after(col, mark, 5, 15)
        assert agent.running()
        assert "Traceback" not in agent.output, agent.output[-3000:]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9" * (MAX_NUMBER_CHARS + 1), f"holds a number of {MAX_NUMBER_CHARS + 1} digits"),
        ("-" + "9" * 5000, "holds a number of 5000 digits"),
        ("[1, 0." + "1" * 5000 + "]", "holds a number of 5000 digits"),
        ('{"a": "' + "9" * 5000 + '", "b": ' + "8" * 41 + "}", "holds a number of 41 digits (888"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"is nested too deeply (more than {MAX_DEPTH} levels)"),
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
        ('{"a": ', "is not valid JSON: Expecting value"),
        (b'"\xff"', "is not UTF-8 text (byte 1)"),
    ],
)
def test_loads_bounded_refuses_in_one_line(text: str | bytes, expected: str) -> None:
    with pytest.raises(JsonLimitError) as exc:
        loads_bounded(text)
    assert str(exc.value).startswith(expected) and "\n" not in str(exc.value) and len(str(exc.value)) < 200


def test_loads_bounded_takes_what_real_messages_hold() -> None:
    doc = {
        "version": 2**63 - 1,
        "x": [1.5e-300, -0.0, 1.7976931348623157e308],
        "deep": [[[[{"a": None}]]]],
        "text": "[[[[" * 100 + "9" * 5000 + '"{',  # brackets and digits inside a string are text
    }
    assert loads_bounded(json.dumps(doc)) == doc
    assert loads_bounded("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None  # the limit itself is taken
    assert loads_bounded("9" * MAX_NUMBER_CHARS) == int("9" * MAX_NUMBER_CHARS)
    nan = loads_bounded('{"x": NaN}')["x"]
    assert nan != nan  # left to the reader (an update names the key), unless finite=True asks
    with pytest.raises(JsonLimitError, match="holds NaN, not a finite number"):
        loads_bounded('{"x": NaN}', finite=True)
    with pytest.raises(JsonLimitError, match="out of a double's range"):
        loads_bounded('{"x": 1e999}', finite=True)
