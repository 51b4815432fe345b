"""A secured broker link, end to end: TLS, passwords, connection errors, the Last Will.

The agent runs as a real process (as in test_e2e.py) against a second mosquitto with a TLS
listener (client certificate + password) and a plain listener (password), both on loopback.
What the tests read: the agent's stderr, what a subscriber sees, and the broker's own log.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from certs import SecureBroker, start_secure_mosquitto
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Collector, Message, run_agent, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import LocalBroker, free_port, start_mosquitto

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

# distinctive, so that any leak is found by a plain substring search
PASSWORD = "pw-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(12)
USER = "edge-device"
LINK_LOG = "edge_agent.mqtt.link:"


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path_factory.mktemp("secure-broker"), user=USER, password=PASSWORD)
    yield broker
    broker.stop()


class SecureCollector(Collector):
    """A Collector that logs in to the secured broker's plain listener."""

    def __init__(self, broker: SecureBroker, topic: str) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(broker.user, broker.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", broker.plain_port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError(f"the secured broker did not acknowledge the subscription to {topic}")


@pytest.fixture
def scol(secure: SecureBroker, device: str) -> Iterator[SecureCollector]:
    c = SecureCollector(secure, f"edge/{device}/#")
    yield c
    c.close()


def sections(bundled: Path) -> dict[str, dict[str, Any]]:
    """The bundled digits model on a looping subset of its frames, 5 frames a second."""
    return {
        "source": {"kind": "images", "path": str(bundled / "digits_frames" / "000*_*.png"), "loop": True, "fps": 5},
        "model": {
            "path": str(bundled / "digits_uint8.tflite"),
            "labels": str(bundled / "digits_labels.txt"),
            "interpreter": INTERPRETER,
        },
        "preprocess": {
            "resize": "stretch",
            "interpolation": "linear",
            "color": "rgb",
            "scale": 1 / 255,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }


def tls_config(
    tmp_path: Path, secure: SecureBroker, device: str, bundled: Path, *, password: str, ca: Path | None = None
) -> Path:
    """TLS with the test CA (or `ca`) and the client certificate, a password from a file beside the config."""
    (tmp_path / "mqtt_password").write_text(password + "\n")
    cfg = write_config(
        tmp_path,
        device=device,
        port=secure.tls_port,
        sections=sections(bundled),
        # relative: resolved against the config's folder
        mqtt_extra={"username": secure.user, "password_file": "mqtt_password", "keepalive": 5},
    )
    # [mqtt] is the last section write_config writes: [mqtt.tls] follows it
    with cfg.open("a") as f:
        f.write(f"[mqtt.tls]\nca = {json.dumps(str(ca or secure.pki.ca))}\n")
        f.write(f"cert = {json.dumps(str(secure.pki.client_cert))}\nkey = {json.dumps(str(secure.pki.client_key))}\n")
    return cfg


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def link_lines(output: str, needle: str) -> list[str]:
    """The agent's log lines from the broker link that contain `needle`."""
    return [ln for ln in output.splitlines() if LINK_LOG in ln and needle in ln]


def assert_no_secret(output: str, messages: list[Message], *secrets_: str) -> None:
    wire = "\n".join(
        f"{m.topic} {json.dumps(m.payload) if not isinstance(m.payload, bytes) else m.payload!r}" for m in messages
    )
    for s in secrets_:
        assert s not in output, "a secret appeared in the agent's log"
        assert s not in wire, "a secret appeared in an MQTT payload"


def stop(agent: AgentProcess) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.output[-3000:]


def retained_status(secure: SecureBroker, device: str) -> Any:
    """The retained status as a new subscriber of the secured broker sees it."""
    c = SecureCollector(secure, f"edge/{device}/status")
    try:
        m = c.wait_for(lambda m: m.retain, 5, "the retained status")
    finally:
        c.close()
    return m.payload


def broker_saw(secure: SecureBroker, since: int, needle: str) -> int:
    """Broker log lines after offset `since` with `needle`: one per failed attempt of the agent."""
    return sum(needle in ln for ln in secure.log[since:].splitlines())


def broker_errors(col: Collector) -> list[dict[str, Any]]:
    return [e for e in col.on("events") if isinstance(e, dict) and e.get("kind") == "broker_error"]


# ---- 1. TLS + client certificate + password ------------------------------------------------
def test_tls_with_password_connects_and_publishes(
    tmp_path: Path, secure: SecureBroker, device: str, scol: SecureCollector, bundled: Path
) -> None:
    cfg = tls_config(tmp_path, secure, device, bundled, password=PASSWORD)
    with AgentProcess(cfg) as agent:
        scol.wait_status("online", 30)
        scol.wait_for(lambda m: m.leaf == "results", 15, "a result")
        assert retained_status(secure, device)["state"] == "online"
        stop(agent)
    scol.wait_status("offline", 10)
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    assert not link_lines(out, "WARNING"), out[-3000:]
    assert not broker_errors(scol), "a clean connection raised broker_error"
    assert_no_secret(out, scol.snapshot(), PASSWORD)


# ---- 2. a wrong password, corrected while the agent runs ------------------------------------
def test_wrong_password_retries_then_connects_once_the_file_is_corrected(
    tmp_path: Path, secure: SecureBroker, device: str, scol: SecureCollector, bundled: Path
) -> None:
    cfg = tls_config(tmp_path, secure, device, bundled, password=WRONG_PASSWORD)
    mark = len(secure.log)
    with AgentProcess(cfg) as agent:
        wait_until(lambda: link_lines(agent.output, "refused the connection"), 20, "the refusal in the log")
        first = time.monotonic()
        wait_until(lambda: broker_saw(secure, mark, "not authorised") >= 3, 10, "three attempts")
        # after a refusal paho waits 1 s, then 2 s: three attempts take about 3 s, never a burst
        assert time.monotonic() - first >= 2.0
        assert agent.running()
        (tmp_path / "mqtt_password").write_text(PASSWORD + "\n")  # re-read before the next attempt
        scol.wait_status("online", 15)
        ev = scol.wait_for(lambda m: m.leaf == "events" and m.payload.get("kind") == "broker_error", 5, "broker_error")
        stop(agent)
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    refused = link_lines(out, "refused the connection")
    assert len(refused) == 1, refused  # one line for the cause, not one per attempt
    assert len(link_lines(out, "WARNING")) == 1, out[-3000:]
    assert "Not authorized" in refused[0] and "mqtt.password_file" in refused[0], refused
    assert ev.payload["severity"] == "warning"
    assert ev.payload["detail"]["failed_attempts"] >= 3, ev.payload
    assert "refused the connection" in ev.payload["detail"]["last_error"], ev.payload
    assert len(broker_errors(scol)) == 1, broker_errors(scol)
    assert_no_secret(out, scol.snapshot(), PASSWORD, WRONG_PASSWORD)


# ---- 3. the wrong CA ------------------------------------------------------------------------
def test_wrong_ca_is_one_clear_line_and_the_agent_keeps_retrying(
    tmp_path: Path, secure: SecureBroker, device: str, scol: SecureCollector, bundled: Path
) -> None:
    # paho cannot swap the CA of a configured TLS context: fixing mqtt.tls.ca needs a restart
    cfg = tls_config(tmp_path, secure, device, bundled, password=PASSWORD, ca=secure.pki.other_ca)
    mark = len(secure.log)
    with AgentProcess(cfg) as agent:
        wait_until(lambda: link_lines(agent.output, "certificate verification"), 20, "the TLS error in the log")
        # paho tries again 3 s after a failed first attempt (it waits 1 s, then 2 s)
        wait_until(lambda: broker_saw(secure, mark, "unknown ca") >= 2, 10, "a second attempt")
        assert agent.running()
        stop(agent)
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    lines = link_lines(out, "certificate verification")
    assert len(lines) == 1, lines
    assert "mqtt.tls.ca" in lines[0] and "restart" in lines[0], lines
    assert len(link_lines(out, "WARNING")) == 1, out[-3000:]
    assert not scol.on("status"), "nothing may reach the broker over an unverified link"
    assert_no_secret(out, scol.snapshot(), PASSWORD)


# ---- 4. no broker yet -----------------------------------------------------------------------
def test_unreachable_broker_then_connects_when_it_appears(tmp_path: Path, device: str, bundled: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, device=device, port=port, sections=sections(bundled), mqtt_extra={"keepalive": 5})
    broker: LocalBroker | None = None
    with AgentProcess(cfg) as agent:
        try:
            wait_until(lambda: link_lines(agent.output, "connection refused"), 20, "the refusal in the log")
            # paho tries again 3 s after a refused first attempt: start the broker well within that
            time.sleep(1.5)
            assert agent.running()
            broker = start_mosquitto(port)
            col = Collector(port, f"edge/{device}/#")
            try:
                col.wait_status("online", 15)
                ev = col.wait_for(lambda m: m.leaf == "events" and m.payload.get("kind") == "broker_error", 5, "event")
                stop(agent)
            finally:
                col.close()
        finally:
            if broker is not None:
                broker.stop()
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    lines = link_lines(out, "connection refused")
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0], lines
    assert ev.payload["detail"]["failed_attempts"] >= 1, ev.payload
    assert "connection refused" in ev.payload["message"], ev.payload


# ---- 5. and 7. no password over plain TCP; the password from $CREDENTIALS_DIRECTORY ----------
def test_password_without_tls_is_refused_at_validation(tmp_path: Path, device: str) -> None:
    (tmp_path / "mqtt_password").write_text(PASSWORD)
    cfg = write_config(
        tmp_path,
        device=device,
        port=1883,
        sections={"model": {"path": "model.tflite"}},
        mqtt_extra={"username": USER, "password_file": "mqtt_password"},
    )
    proc = run_agent(cfg, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mqtt.password_file:") and "clear text" in lines[0], lines
    assert PASSWORD not in proc.stderr + proc.stdout


def test_plaintext_password_when_allowed_from_credentials_directory(
    tmp_path: Path,
    secure: SecureBroker,
    device: str,
    scol: SecureCollector,
    bundled: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = tmp_path / "credentials"  # what systemd's LoadCredential=mqtt_password:... provides
    creds.mkdir()
    (creds / "mqtt_password").write_text(PASSWORD)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    cfg = write_config(
        conf_dir,
        device=device,
        port=secure.plain_port,
        sections=sections(bundled),
        # no mqtt_password beside the config: only the credentials directory has it
        mqtt_extra={"username": USER, "password_file": "mqtt_password", "allow_plaintext_password": True},
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with AgentProcess(cfg) as agent:
        scol.wait_status("online", 30)
        scol.wait_for(lambda m: m.leaf == "stats", 15, "stats")
        stop(agent)
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    assert not broker_errors(scol)
    assert_no_secret(out, scol.snapshot(), PASSWORD)


def test_missing_password_file_is_one_line_and_read_when_it_appears(
    tmp_path: Path, secure: SecureBroker, device: str, scol: SecureCollector, bundled: Path
) -> None:
    cfg = write_config(
        tmp_path,
        device=device,
        port=secure.plain_port,
        sections=sections(bundled),
        mqtt_extra={"username": USER, "password_file": "mqtt_password", "allow_plaintext_password": True},
    )
    with AgentProcess(cfg) as agent:
        wait_until(lambda: link_lines(agent.output, "mqtt.password_file"), 20, "the missing secret in the log")
        assert agent.running()
        (tmp_path / "mqtt_password").write_text(PASSWORD)
        scol.wait_status("online", 15)
        ev = scol.wait_for(lambda m: m.leaf == "events" and m.payload.get("kind") == "broker_error", 5, "broker_error")
        stop(agent)
    out = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    lines = link_lines(out, "mqtt.password_file")
    assert len(lines) == 1 and "not found" in lines[0], lines
    assert "secret file not found" in ev.payload["detail"]["last_error"], ev.payload
    assert_no_secret(out, scol.snapshot(), PASSWORD)


# ---- 8. the Last Will, seen by the real mosquitto_sub ---------------------------------------
def test_mosquitto_sub_sees_retained_offline_after_sigkill(
    tmp_path: Path, mosquitto: LocalBroker, device: str, bundled: Path
) -> None:
    sub = shutil.which("mosquitto_sub")
    if sub is None:
        pytest.skip("mosquitto_sub is not installed (Debian package mosquitto-clients)")
    cfg = write_config(
        tmp_path, device=device, port=mosquitto.port, sections=sections(bundled), mqtt_extra={"keepalive": 5}
    )
    out_path = tmp_path / "sub.txt"

    def states() -> list[str]:
        found = []
        for ln in out_path.read_text().splitlines():
            _topic, _, payload = ln.partition(" ")
            found.append(json.loads(payload)["state"])
        return found

    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1", "-v", "-t", f"edge/{device}/status"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            with AgentProcess(cfg) as agent:
                wait_until(lambda: "online" in states(), 30, "online from mosquitto_sub")
                agent.proc.send_signal(signal.SIGKILL)
                assert agent.wait(10) == -signal.SIGKILL
            wait_until(lambda: states()[-1:] == ["offline"], 15, "offline (the Last Will) from mosquitto_sub")
        finally:
            proc.terminate()
            proc.wait(5)
    # a new mosquitto_sub gets the Last Will as the retained status
    got = subprocess.run(
        [sub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", f"edge/{device}/status", "-C", "1", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"] == "offline"
