"""systemd's notify protocol against a real AF_UNIX datagram socket as $NOTIFY_SOCKET."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BUNDLED, INTERPRETER
from mqtt_helpers import Collector, agent_command, subprocess_env, write_config

from edge_agent.broker import LocalBroker
from edge_agent.logs import _field
from edge_agent.service import Notifier

WATCHDOG_USEC = 600_000  # pings every 0.3 s
FEATURES = ("age", "bmi", "bp", "s5")


class NotifySocket:
    """What systemd would receive: every datagram, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        return [(t, ln) for t, msg in list(self.got) for ln in msg.split("\n")]

    def wait_for(self, line: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, ln in self.lines():
                if ln == line:
                    return t
            time.sleep(0.02)
        raise AssertionError(f"no {line!r} within {timeout} s; got {self.lines()[-10:]}")

    def pings(self, after: float, before: float) -> int:
        return sum(1 for t, ln in self.lines() if ln == "WATCHDOG=1" and after <= t < before)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def start(cfg: Path, notify: NotifySocket, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {**subprocess_env(), "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), **extra_env}
    log = cfg.with_suffix(".log").open("wb")
    return subprocess.Popen(agent_command(cfg), env=env, stdout=log, stderr=subprocess.STDOUT)


def sensor_sections(csv_path: Path) -> dict[str, dict[str, object]]:
    feats = {
        f["name"]: f
        for f in json.loads((BUNDLED / "manifest.json").read_text())["models"]["sensor"]["transform"]["features"]
    }
    return {
        "source": {"kind": "csv", "path": str(csv_path)},
        "model": {"path": str(BUNDLED / "sensor.tflite"), "task": "regression", "interpreter": INTERPRETER},
        "preprocess": {"features": [{"name": n, "mean": feats[n]["mean"], "std": feats[n]["std"]} for n in FEATURES]},
    }


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.send("READY=1") is False
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None  # not our pid
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 0.5
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


def test_ready_status_watchdog_hang_and_stopping(
    tmp_path: Path, notify: NotifySocket, mosquitto: LocalBroker, device: str
) -> None:
    """A sensor feed through a FIFO: rows flow (pings), then the writer goes quiet while keeping
    the pipe open — a capture that hangs for real — and the pings stop; rows again, pings again."""
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sensor_sections(fifo))
    proc = start(cfg, notify)
    try:
        with fifo.open("w") as feed:  # blocks until the agent opens the pipe
            feed.write(",".join(FEATURES) + "\n")
            feed.flush()
            assert not [ln for _, ln in notify.lines() if ln == "READY=1"], "READY before any frame went through"

            def rows(n: int) -> None:
                for i in range(n):
                    feed.write(f"{50 + i % 20},{25.0 + i % 7},{90 + i % 11},{4.5}\n")
                    feed.flush()
                    time.sleep(0.05)

            rows(10)
            ready_at = notify.wait_for("READY=1", 20)
            status = [ln for _, ln in notify.lines() if ln.startswith("STATUS=")]
            assert status and "sensor.tflite (cpu)" in status[0], status
            rows(40)  # 2 s of frames: pings every 0.3 s
            t1 = time.monotonic()
            assert notify.pings(ready_at, t1) >= 4, notify.lines()[-20:]
            # the feed goes quiet, the pipe stays open: the source blocks in read()
            time.sleep(1.5)  # the last pings of the flowing period may still come
            quiet_from = time.monotonic()
            time.sleep(2.0)
            assert notify.pings(quiet_from, time.monotonic()) == 0, "pings went on while capture hung"
            rows(20)  # frames flow again: so do the pings
            assert notify.pings(quiet_from + 2.0, time.monotonic() + 0.01) >= 1
        # the writer closed: the source is finished, idle by design, pings go on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    notify.wait_for("STOPPING=1", 5)
    out = cfg.with_suffix(".log").read_text(errors="replace")
    assert "Traceback" not in out, out[-3000:]


def test_no_ready_when_the_self_test_fails(
    tmp_path: Path, notify: NotifySocket, mosquitto: LocalBroker, device: str
) -> None:
    """nan_prone fed raw pixels fails its self-test: systemd must never hear READY."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted((BUNDLED / "digits_frames").glob("*.png"))[:5]:
        (frames / f.name).write_bytes(f.read_bytes())
    sections = {
        "source": {"kind": "images", "path": str(frames), "loop": True, "fps": 20},
        "model": {"path": str(BUNDLED / "nan_prone.tflite"), "interpreter": INTERPRETER},
        "guard": {"on_persistent_fault": "none"},
    }
    cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sections)
    proc = start(cfg, notify)
    try:
        time.sleep(4)
        assert proc.poll() is None
        assert not [ln for _, ln in notify.lines() if ln == "READY=1"], notify.lines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sighup_rereads_the_config_and_keeps_the_old_one_when_broken(
    tmp_path: Path, notify: NotifySocket, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    imagenet = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    sections: dict[str, dict[str, object]] = {
        "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 20},
        "model": {"path": str(BUNDLED / "digits_float.tflite"), "interpreter": INTERPRETER},
        "preprocess": imagenet,
        "postprocess": {"top_k": 1},
    }
    cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sections)
    proc = start(cfg, notify)
    try:
        col.wait_for(lambda m: m.leaf == "results" and len(m.payload["top"]) == 1, 30, "a top-1 result")
        good = cfg.read_text()
        cfg.write_text(good.replace("top_k = 1", "top_k = 70000"))  # invalid
        proc.send_signal(signal.SIGHUP)
        ev = col.wait_for(lambda m: m.leaf == "events" and m.payload["kind"] == "config_rejected", 15, "the rejection")
        assert "postprocess.top_k" in ev.payload["message"] and "keeping the running config" in ev.payload["message"]
        mark = len(col.snapshot())
        col.wait_for(lambda m: m.leaf == "results" and len(m.payload["top"]) == 1, 10, "results go on", start=mark)
        cfg.write_text(good.replace("top_k = 1", "top_k = 3"))
        proc.send_signal(signal.SIGHUP)
        col.wait_for(lambda m: m.leaf == "results" and len(m.payload["top"]) == 3, 15, "top-3 results after the reload")
        assert [ln for _, ln in notify.lines() if ln == "RELOADING=1"], notify.lines()[-10:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def ping_times(notify: NotifySocket) -> list[float]:
    return [t for t, ln in notify.lines() if ln == "WATCHDOG=1"]


def test_watchdog_pings_stop_while_inference_hangs(
    tmp_path: Path, notify: NotifySocket, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """An invoke() that hangs for real (the isolated worker sleeps inside it, through the worker's
    test-only fault hook): no pings while it hangs, even though capture goes on; the hang is cut
    at invoke_timeout_s, the worker restarted, and the pings come back with the results."""
    sections: dict[str, dict[str, object]] = {
        "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 20},
        "model": {
            "path": str(BUNDLED / "digits_uint8.tflite"),
            "interpreter": INTERPRETER,
            "isolation": "process",
            "invoke_timeout_s": 3,
        },
        "preprocess": {"resize": "stretch", "color": "rgb"},
    }
    cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sections)
    # invoke 1 is the self-test; the 41st hangs (about 2 s of frames), and every 40th after a restart
    proc = start(cfg, notify, EDGE_AGENT_TEST_WORKER_FAULT="hang-after:40")
    try:
        hang = col.wait_for(
            lambda m: m.leaf == "events" and m.payload["kind"] == "inference_hang", 60, "an inference_hang event"
        )
        after = col.snapshot().index(hang)
        col.wait_for(lambda m: m.leaf == "results", 30, "results after the restart", start=after + 1)
        time.sleep(1.0)
        pings = ping_times(notify)
        gaps = [(b - a, a) for a, b in itertools.pairwise(pings)]
        longest, gap_start = max(gaps)
        # pings every 0.3 s while frames flow; none for the 3 s the invoke hung
        assert longest >= 2.5, gaps
        assert gap_start < hang.at, "the silent period is the hang"
        assert [t for t in pings if t > hang.at], "no pings after the recovery"
        assert sorted(g for g, _ in gaps)[len(gaps) // 2] < 0.5, "pings were not regular while frames flowed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_guard_restart_action_stops_pings_and_exits_75(
    tmp_path: Path, notify: NotifySocket, mosquitto: LocalBroker, device: str, col: Collector
) -> None:
    """nan_prone fed raw pixels gives NaN on every frame; with on_persistent_fault = "restart" the
    agent stops pinging the moment it asks for the restart, then exits 75 (EX_TEMPFAIL) so that
    Restart=on-failure restarts it; the watchdog would back the request up if the exit hung."""
    sections: dict[str, dict[str, object]] = {
        "source": {"kind": "images", "path": str(BUNDLED / "digits_frames"), "loop": True, "fps": 20},
        "model": {"path": str(BUNDLED / "nan_prone.tflite"), "interpreter": INTERPRETER},
        "guard": {"on_persistent_fault": "restart", "degrade_after": 3, "act_after": 40, "event_interval_s": 0},
    }
    cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sections)
    proc = start(cfg, notify)
    try:
        assert proc.wait(60) == 75
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    asked = col.wait_for(
        lambda m: m.leaf == "events" and m.payload["kind"] == "restart_requested", 10, "restart_requested"
    )
    assert asked.payload["severity"] == "critical"
    stopping = notify.wait_for("STOPPING=1", 5)
    pings = ping_times(notify)
    assert len(pings) >= 3, "frames flowed through inference (faulty, but inference ran): pings before"
    assert not [t for t in pings if t > asked.at], "a ping after the restart was requested"
    assert pings[-1] < stopping


def test_journal_fields_when_started_by_systemd(tmp_path: Path, mosquitto: LocalBroker, device: str) -> None:
    """$JOURNAL_STREAM set: log records go to the journal socket with their fields."""
    journal = NotifySocket(tmp_path / "journal.sock")  # the same kind of socket: datagrams in
    try:
        sections = {"model": {"path": str(tmp_path / "absent.tflite"), "retry_interval_s": 0.5}}
        cfg = write_config(tmp_path, device=device, port=mosquitto.port, sections=sections)
        env = {**subprocess_env(), "JOURNAL_STREAM": "8:12345", "EDGE_AGENT_JOURNAL_SOCKET": str(journal.path)}
        proc = subprocess.Popen(agent_command(cfg), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any("EVENT_KIND=model_error" in m for _, m in journal.got):
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        record = next(m for _, m in journal.got if "EVENT_KIND=model_error" in m)
        fields = dict(line.split("=", 1) for line in record.splitlines() if "=" in line)
        assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "edge-agent"
        assert "model file not found" in fields["MESSAGE"] and fields["LOGGER"] == "edge_agent.agent"
        assert fields["CODE_FUNC"] and fields["CODE_LINE"].isdigit()
        assert b"model_error" not in err  # nothing doubled on stderr
    finally:
        journal.close()


def test_journal_field_with_a_newline_uses_the_binary_form() -> None:
    assert _field("MESSAGE", "one line") == b"MESSAGE=one line\n"
    assert _field("MESSAGE", "two\nlines") == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n"


SIGNAL_IN_WAIT = """
import os, signal, sys
from edge_agent.agent import Agent
from edge_agent.config import parse_config

agent = Agent(parse_config({
    "device": {"id": "sig", "state_dir": sys.argv[1]},
    "source": {"kind": "synthetic"},
    "model": {"path": sys.argv[2]},
    "mqtt": {"host": "127.0.0.1", "port": 9},
}))
agent.install_signal_handlers()
# the loop's state inside _stop.wait() when a wait times out: the Event's lock held
with agent._stop._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # bytecodes: the handler runs among them, with the lock still held
        pass
assert agent._stop_if_signalled(), "the signal was not noted"
assert agent._stop.is_set()
print("stopping after", signal.Signals(agent._stop_signal).name)
"""


@pytest.mark.e2e
def test_sigterm_while_the_loop_holds_the_stop_events_lock_does_not_hang(tmp_path: Path) -> None:
    # A handler that calls Event.set() would wait forever for the lock its own thread holds:
    # seen as an agent that logged "signal SIGTERM: stopping" and never stopped.
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_WAIT, str(tmp_path / "state"), str(BUNDLED / "digits_float.tflite")],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopping after SIGTERM" in done.stdout
