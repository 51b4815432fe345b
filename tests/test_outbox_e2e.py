"""The outbox end to end: the real agent process against its own mosquitto, stopped and
restarted on the same port, and a subscriber that reconnects and resubscribes by itself.

What a consumer relies on: every event produced while the broker was away arrives once it is
back (at least once: duplicates carry the same seq and payload), in seq order of first
arrival, with no seq ever reused across a crash; a full outbox drops results before events and
says how many events it dropped; a state_dir that cannot be written loses nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import INTERPRETER
from mqtt_helpers import AgentProcess, Broker, retained, write_config
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.e2e  # starts a broker or an edge-agent process (see tests/conftest.py)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DIGITS_PREPROCESS = {"scale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
TWENTY_FRAMES = "00[01]?_*.png"  # 0000..0019
OUTAGE_S = 30.0
# paho's reconnect backoff in the agent (reconnect_delay_set(1, 60)): attempts 1, 3, 7, 15, 31,
# 63 s after the link dropped, so a 30 s outage is over at the attempt 31 s in (60 s at worst)
RECONNECT_TIMEOUT_S = 75.0


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.stop()


# ---- a subscriber that survives broker restarts ------------------------------------------------
@dataclass(frozen=True)
class Msg:
    leaf: str  # the topic after `edge/<device>/`
    payload: Any
    retain: bool
    at: float  # monotonic arrival time
    wall: float  # time.time() at arrival (comparable with the agent's `ts`)


class Recorder:
    """Subscribes to `edge/<device>/#` at QoS 1 on every (re)connection and records everything.

    paho retries the connection every 0.05-0.2 s, so once a restarted broker listens this
    client is subscribed again well before the agent's next attempt (1 s at the earliest).
    """

    def __init__(self, port: int, device: str) -> None:
        self.topic = f"edge/{device}/#"
        self.messages: list[Msg] = []
        self.subscriptions = 0
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.wait_subscribed(0)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        with self._cond:
            self.subscriptions += 1
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        m = Msg(msg.topic.split("/", 2)[2], payload, bool(msg.retain), time.monotonic(), time.time())
        with self._cond:
            self.messages.append(m)
            self._cond.notify_all()

    def wait_subscribed(self, after: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.subscriptions > after, timeout):
                raise AssertionError(f"not subscribed to {self.topic} within {timeout:g} s")

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def snapshot(self) -> list[Msg]:
        with self._cond:
            return list(self.messages)

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float, what: str, *, start: int = 0) -> Msg:
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(left)

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(cond, timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def status(self, state: str | None, timeout: float, *, start: int = 0) -> Msg:
        """The first status message (in `state`, if given) from index `start` on."""
        return self.wait_for(
            lambda m: m.leaf == "status" and state in (None, m.payload["state"]),
            timeout,
            f"status {state or 'message'}",
            start=start,
        )

    def stats(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str, *, start: int = 0) -> Msg:
        return self.wait_for(lambda m: m.leaf == "stats" and pred(m.payload), timeout, what, start=start)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close()


def first_arrivals(msgs: list[Msg], leaf: str) -> list[tuple[dict[str, Any], Msg]]:
    """Each seq once, in order of first arrival; a duplicate must repeat its payload exactly."""
    seen: dict[int, dict[str, Any]] = {}
    out: list[tuple[dict[str, Any], Msg]] = []
    for m in msgs:
        if m.leaf != leaf:
            continue
        seq = m.payload["seq"]
        if seq in seen:
            assert seen[seq] == m.payload, f"{leaf} seq {seq} reused:\n{seen[seq]}\n{m.payload}"
            continue
        seen[seq] = m.payload
        out.append((m.payload, m))
    return out


def assert_in_order(seqs: list[int], what: str) -> None:
    late = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    assert not late, f"{what}: first arrivals out of seq order at {late[:10]}"


def gaps(seqs: list[int], start: int = 1) -> list[int]:
    present = set(seqs)
    return [s for s in range(start, max(seqs) + 1) if s not in present]


def dup_count(msgs: list[Msg], leaf: str) -> int:
    n = sum(1 for m in msgs if m.leaf == leaf)
    return n - len({m.payload["seq"] for m in msgs if m.leaf == leaf})


def stop_agent(agent: AgentProcess, rec: Recorder, mark: int) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.output[-4000:]
    assert "Traceback" not in agent.output, agent.output[-4000:]
    rec.status("offline", 15, start=mark)  # the agent's last publication: everything is in


# ---- configs -----------------------------------------------------------------------------------
def nan_prone(bundled: Path, fps: float = 20) -> dict[str, dict[str, Any]]:
    """Raw pixels into nan_prone: every frame is one nan_output event."""
    return {
        "source": {"kind": "images", "path": str(bundled / "digits_frames" / TWENTY_FRAMES), "loop": True, "fps": fps},
        "model": {
            "path": str(bundled / "nan_prone.tflite"),
            "labels": str(bundled / "digits_labels.txt"),
            "task": "classification",
            "interpreter": INTERPRETER,
        },
        "guard": {"event_interval_s": 0, "on_persistent_fault": "none"},
        "service": {"stats_interval_s": 1},
    }


def digits(bundled: Path, folder: Path, fps: float) -> dict[str, dict[str, Any]]:
    """digits_float with its transform: a result per decodable frame, source_error per corrupt file."""
    return {
        "source": {"kind": "images", "path": str(folder), "loop": True, "fps": fps},
        "model": {
            "path": str(bundled / "digits_float.tflite"),
            "labels": str(bundled / "digits_labels.txt"),
            "task": "classification",
            "interpreter": INTERPRETER,
        },
        "preprocess": DIGITS_PREPROCESS,
        "guard": {"event_interval_s": 0},
        "service": {"stats_interval_s": 1},
    }


def mixed_folder(bundled: Path, dest: Path, *, every: int = 5, n: int = 20) -> Path:
    """Digit frames with a corrupt file in every `every`-th place."""
    dest.mkdir()
    frames = sorted((bundled / "digits_frames").glob("*.png"))
    for i in range(n):
        if i % every == every - 1:
            (dest / f"{i:03d}_corrupt.png").write_bytes(b"\x89PNG this is not an image" * 4)
        else:
            (dest / f"{i:03d}_{frames[i].name}").write_bytes(frames[i].read_bytes())
    return dest


def queued_events(db_path: Path) -> list[dict[str, Any]]:
    """The events waiting in an outbox, read without writing to it."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            rows = db.execute("SELECT payload FROM outbox WHERE kind = 'event' ORDER BY id").fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" not in str(err):
                raise
            return []  # the agent has created the file but not yet its tables
    return [json.loads(p) for (p,) in rows]


# ---- 1. a 30 s broker outage ---------------------------------------------------------------------
@pytest.mark.slow
def test_broker_outage_loses_no_event(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    broker.start()
    rec = Recorder(broker.port, device)
    recorders.append(rec)
    cfg = write_config(tmp_path, device=device, port=broker.port, sections=nan_prone(bundled))
    with AgentProcess(cfg) as agent:
        rec.wait_until(lambda: sum(m.leaf == "events" for m in rec.messages) >= 20, 30, "events flowing")

        subscribed = rec.subscriptions
        down_wall = time.time()
        broker.hang_then_die(0.5)  # ~10 events handed over and never acknowledged
        time.sleep(OUTAGE_S - 0.5)  # faults keep occurring: 20 events a second into the outbox
        assert agent.running(), agent.output[-4000:]
        mark = rec.mark()  # nothing can arrive while the broker is down
        # the recorder must be back before the agent, or what the agent sends first is missed:
        # hold the agent still (SIGSTOP) until the recorder has resubscribed, so that the race
        # between the two reconnect loops cannot decide the test
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            broker.start()
            up_at = time.monotonic()
            rec.wait_subscribed(subscribed)
        finally:
            agent.proc.send_signal(signal.SIGCONT)

        online = rec.status(None, RECONNECT_TIMEOUT_S, start=mark)  # announced on every connect
        # live, not the retained copy: the recorder was subscribed before the agent came back
        assert not online.retain, "the agent reconnected before the recorder: events may have been missed"
        caught_up = rec.stats(
            lambda s: s["broker_connected"] and s["outbox"]["depth"] <= 5, 60, "the outbox drained", start=mark
        )
        stop_mark = rec.mark()
        stop_agent(agent, rec, stop_mark)

    msgs = rec.snapshot()
    events = first_arrivals(msgs, "events")
    seqs = [e["seq"] for e, _ in events]
    assert_in_order(seqs, "events")
    assert seqs[0] == 1 and not gaps(seqs), f"missing event seqs: {gaps(seqs)[:20]}"
    last_stats = [m.payload for m in msgs if m.leaf == "stats"][-1]
    nan = [e for e, _ in events if e["kind"] == "nan_output"]
    assert len(nan) == last_stats["faults"]["nan_output"], (len(nan), last_stats["faults"])
    during = [e for e in nan if down_wall <= e["ts"] <= down_wall + OUTAGE_S]
    assert len(during) >= OUTAGE_S * 20 * 0.7, f"only {len(during)} events during the outage"
    # the backlog: everything produced before the reconnection, delivered after it
    backlog_end = max(m.at for e, m in events if e["ts"] < online.wall - 0.5)
    print(
        f"\noutage {OUTAGE_S:g} s: {len(during)} events queued; agent back {online.at - up_at:.1f} s after the broker; "
        f"backlog delivered {backlog_end - online.at:.2f} s after reconnecting; outbox depth <= 5 in stats "
        f"{caught_up.at - online.at:.1f} s after; {dup_count(msgs, 'events')} duplicates of {len(seqs)} events"
    )


# ---- 2. SIGKILL with a backlog -----------------------------------------------------------------------
def test_backlog_survives_sigkill_and_seq_goes_on(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    cfg = write_config(tmp_path, device=device, port=broker.port, sections=nan_prone(bundled))
    db_path = tmp_path / "state" / "outbox.sqlite"
    with AgentProcess(cfg) as agent:  # no broker: everything stays in the outbox
        deadline = time.monotonic() + 60
        while not (db_path.exists() and len(queued_events(db_path)) >= 50):
            assert agent.running(), agent.output[-4000:]
            assert time.monotonic() < deadline, "the outbox did not fill"
            time.sleep(0.2)
        agent.proc.send_signal(signal.SIGKILL)
        assert agent.wait(10) == -signal.SIGKILL
    killed_wall = time.time()
    queued = queued_events(db_path)
    n = len(queued)
    assert [e["seq"] for e in queued] == list(range(1, n + 1)), "the outbox lost or reordered events"

    broker.start()
    rec = Recorder(broker.port, device)
    recorders.append(rec)
    cfg.with_suffix(".log").rename(tmp_path / "first-run.log")
    with AgentProcess(cfg) as agent:
        online = rec.status(None, 30)
        rec.wait_until(
            lambda: len({m.payload["seq"] for m in rec.messages if m.leaf == "events"}) >= n + 20, 30, "new events"
        )
        stop_agent(agent, rec, rec.mark())

    msgs = rec.snapshot()
    events = first_arrivals(msgs, "events")
    seqs = [e["seq"] for e, _ in events]
    assert_in_order(seqs, "events")
    assert seqs[0] == 1 and not gaps(seqs), f"missing event seqs: {gaps(seqs)[:20]}"
    # the queued ones exactly as stored before the kill; the new ones continue the numbering
    assert [e for e, _ in events[:n]] == queued
    assert all(e["ts"] > killed_wall for e, _ in events[n:]), "a seq from before the kill was reused"
    drained = events[n - 1][1].at - online.at
    print(f"\n{n} events queued before SIGKILL: all delivered {drained:.2f} s after the restarted agent connected")


@pytest.mark.slow
def test_sigterm_with_a_backlog_flushes_it_and_exits_0(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    """SIGTERM (systemctl stop) just after the broker came back, with the backlog of the outage
    still queued: the agent flushes it before it goes, exits 0 well within the unit's
    TimeoutStopSec (20 s), leaves `offline` retained and an empty outbox."""
    cfg = write_config(tmp_path, device=device, port=broker.port, sections=nan_prone(bundled, fps=50))
    db_path = tmp_path / "state" / "outbox.sqlite"
    with AgentProcess(cfg) as agent:  # no broker yet: every event waits in the outbox
        deadline = time.monotonic() + 60
        while not (db_path.exists() and len(queued_events(db_path)) >= 200):
            assert agent.running(), agent.output[-4000:]
            assert time.monotonic() < deadline, "the outbox did not fill"
            time.sleep(0.2)
        broker.start()
        rec = Recorder(broker.port, device)
        recorders.append(rec)
        rec.status("online", RECONNECT_TIMEOUT_S)
        backlog = len(queued_events(db_path))
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0, agent.output[-4000:]
        stop_s = time.monotonic() - t0
        assert "Traceback" not in agent.output, agent.output[-4000:]
    rec.status("offline", 15)
    msgs = rec.snapshot()
    events = first_arrivals(msgs, "events")
    seqs = [e["seq"] for e, _ in events]
    assert seqs and seqs[0] == 1 and not gaps(seqs), f"missing event seqs: {gaps(seqs)[:20]}"
    assert queued_events(db_path) == [], "events left behind in the outbox"
    last_stats = [m.payload for m in msgs if m.leaf == "stats"][-1]
    assert len(seqs) >= last_stats["faults"]["nan_output"]
    final = retained(broker.port, f"edge/{device}/status")
    assert final["state"] == "offline"
    print(f"\nSIGTERM with {backlog} events queued: {len(seqs)} delivered, exit 0 after {stop_s:.2f} s")


# ---- 3. the outbox bound ---------------------------------------------------------------------------
def test_full_outbox_drops_results_before_events_and_counts(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    limit_mb = 0.01
    folder = mixed_folder(bundled, tmp_path / "frames")
    broker.start()
    rec = Recorder(broker.port, device)
    recorders.append(rec)
    cfg = write_config(
        tmp_path,
        device=device,
        port=broker.port,
        sections=digits(bundled, folder, fps=50),
        mqtt_extra={"outbox_max_mb": limit_mb, "persist_results": True, "results_qos": 1},
    )
    db_path = tmp_path / "state" / "outbox.sqlite"
    wal = db_path.with_name(db_path.name + "-wal")
    biggest = biggest_wal = 0
    with AgentProcess(cfg) as agent:
        rec.wait_until(lambda: sum(m.leaf == "events" for m in rec.messages) >= 3, 30, "events flowing")
        subscribed = rec.subscriptions
        down_wall = time.time()
        broker.hang_then_die(0.5)  # a full window in flight: those may not be dropped (paho has them)
        # the agent retries 1, 3, 7 s after the link dropped: back at its 7 s attempt
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            biggest = max(biggest, db_path.stat().st_size)
            with contextlib.suppress(FileNotFoundError):
                biggest_wal = max(biggest_wal, wal.stat().st_size)
            time.sleep(0.1)
        mark = rec.mark()
        agent.proc.send_signal(signal.SIGSTOP)  # the recorder first (see the outage test)
        try:
            broker.start()
            rec.wait_subscribed(subscribed)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        online = rec.status(None, RECONNECT_TIMEOUT_S, start=mark)  # announced on every connect
        assert not online.retain, "the agent reconnected before the recorder"
        rec.stats(lambda s: s["broker_connected"] and s["outbox"]["depth"] <= 5, 30, "the outbox drained", start=mark)
        stop_agent(agent, rec, rec.mark())
    biggest = max(biggest, db_path.stat().st_size)

    msgs = rec.snapshot()
    stats = [m.payload for m in msgs if m.leaf == "stats"][-1]
    events = first_arrivals(msgs, "events")
    results = first_arrivals(msgs, "results")
    ev_seqs = [e["seq"] for e, _ in events]
    res_seqs = [r["seq"] for r, _ in results]
    assert_in_order(ev_seqs, "events")
    assert_in_order(res_seqs, "results")
    lost_events, lost_results = gaps(ev_seqs), gaps(res_seqs)
    faults = stats["faults"]
    # ~7 s at 50 fps: ~280 results and ~70 events for a ~10 KB bound, so both kinds overflow
    assert lost_results and lost_events, "the outage did not overflow the outbox"
    # every missing message was counted as dropped, and only those (not the ones in flight)
    assert faults["outbox_dropped_results"] == len(lost_results), (faults, len(lost_results))
    assert faults["outbox_dropped_events"] == len(lost_events), (faults, len(lost_events))
    # the dropped ones are the oldest of the outage: one run each, the newer ones delivered
    assert lost_results == list(range(lost_results[0], lost_results[-1] + 1)), lost_results
    assert lost_events == list(range(lost_events[0], lost_events[-1] + 1)), (lost_events, ev_seqs[:20])
    # results go first: no result outlived a dropped event, so the backlog (made after the link
    # died, sent after it came back) holds only results newer than its oldest event
    backlog = [p for p, _ in events + results if down_wall + 0.5 < p["ts"] < online.wall]
    oldest_event = min(p["ts"] for p in backlog if "kind" in p)
    assert all(p["ts"] > oldest_event for p in backlog if "kind" not in p)
    # said once, after the backlog, with the exact count
    (overflow,) = [e for e, _ in events if e["kind"] == "outbox_overflow"]
    assert overflow["detail"]["dropped_events"] == len(lost_events), overflow
    # (the notice itself may be stamped just before the recorder saw the reconnection: not backlog)
    queued = [p["seq"] for p in backlog if "kind" in p and p["kind"] != "outbox_overflow"]
    assert overflow["seq"] > max(queued), overflow
    assert f"{limit_mb:g} MB" in overflow["message"] and f" {len(lost_events)} " in overflow["message"], overflow
    limit = limit_mb * 1024 * 1024
    # SQLite's own pages (schema, indexes, free pages) come on top of the counted bytes
    assert biggest <= 4 * limit + 64 * 1024, f"outbox.sqlite grew to {biggest} bytes for a {limit:.0f} byte bound"
    print(
        f"\nbound {limit:.0f} B: dropped {len(lost_results)} results, {len(lost_events)} events; "
        f"outbox.sqlite at most {biggest} B, its WAL {biggest_wal} B"
    )


# ---- 4. the state_dir stops taking writes mid-run -------------------------------------------------------
def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem under `path`."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
    return filler


def test_state_dir_unwritable_mid_run_loses_nothing(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    folder = mixed_folder(bundled, tmp_path / "frames")  # results, and a source_error every 5th frame
    broker.start()
    rec = Recorder(broker.port, device)
    recorders.append(rec)
    # 16 MB: SQLite's WAL grows to ~4 MB between checkpoints, whatever outbox_max_mb says
    with small_tmpfs(tmp_path / "state", "16m") as state:
        cfg = write_config(
            tmp_path,
            device=device,
            port=broker.port,
            sections=digits(bundled, folder, fps=50),
            mqtt_extra={"results_qos": 1},
        )
        with AgentProcess(cfg) as agent:
            rec.wait_until(lambda: sum(m.leaf == "events" for m in rec.messages) >= 10, 30, "events flowing")
            # A rw→ro remount is refused (EBUSY) while SQLite holds the outbox open for writing,
            # as it always does; a full card is the failure that can be made mid-run
            ro = _mount("-o", "remount,ro", str(state))
            filler = None if ro.returncode == 0 else fill(state)
            mark = rec.mark()
            err = rec.wait_for(
                lambda m: m.leaf == "events" and m.payload["kind"] == "storage_error", 20, "storage_error", start=mark
            )
            failed_at = err.at
            # events keep arriving from the memory queue
            rec.wait_until(
                lambda: sum(m.leaf == "events" and m.at > failed_at for m in rec.messages) >= 20, 15, "events"
            )
            rec.stats(lambda s: not s["outbox"]["on_disk"], 5, "stats with the outbox in memory", start=mark)
            assert agent.running(), agent.output[-4000:]

            if filler is None:
                assert _mount("-o", "remount,rw", str(state)).returncode == 0
            else:
                filler.unlink()
            writable_at = time.monotonic()
            back = rec.wait_for(
                lambda m: m.leaf == "events" and m.payload["kind"] == "storage_recovered",
                15,
                "storage_recovered",
                start=mark,
            )
            rec.stats(lambda s: s["outbox"]["on_disk"], 5, "stats with the outbox on disk", start=rec.mark())
            stop_agent(agent, rec, rec.mark())

    msgs = rec.snapshot()
    events = first_arrivals(msgs, "events")
    seqs = [e["seq"] for e, _ in events]
    assert_in_order(seqs, "events")
    assert seqs[0] == 1 and not gaps(seqs), f"missing event seqs: {gaps(seqs)[:20]}"
    e = err.payload
    assert e["severity"] == "error" and str(state) in e["detail"]["state_dir"], e
    assert "kept in memory" in e["message"], e
    assert len([x for x, _ in events if x["kind"] == "storage_error"]) == 1, "storage_error said more than once"
    last_stats = [m.payload for m in msgs if m.leaf == "stats"][-1]
    assert len([x for x, _ in events if x["kind"] == "source_error"]) == last_stats["faults"]["source_error"]
    # results (not persisted) go on with their seqs: reopening the outbox is no crash recovery
    res_seqs = [r["seq"] for r, _ in first_arrivals(msgs, "results")]
    assert_in_order(res_seqs, "results")
    assert res_seqs[0] == 1 and not gaps(res_seqs), f"result seqs jump: {gaps(res_seqs)[:3]}... of {len(res_seqs)}"
    how = "read-only remount" if filler is None else "full filesystem"
    print(f"\n{how}: storage_recovered {back.at - writable_at:.1f} s after the state_dir could be written again")


# ---- 5. bad messages on the inbound topics ---------------------------------------------------------
def test_bad_inbound_messages_are_answered_and_pause_resume_work(
    tmp_path: Path, broker: Broker, recorders: list[Recorder], device: str, bundled: Path
) -> None:
    folder = mixed_folder(bundled, tmp_path / "frames", every=1000)  # no corrupt file
    broker.start()
    rec = Recorder(broker.port, device)
    recorders.append(rec)
    cfg = write_config(
        tmp_path,
        device=device,
        port=broker.port,
        sections=digits(bundled, folder, fps=20),
        mqtt_extra={"max_incoming_kb": 1},
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def ask(leaf: str, payload: bytes, answer_leaf: str) -> dict[str, Any]:
        mark = rec.mark()
        pub.publish(f"edge/{device}/{leaf}", payload, qos=1).wait_for_publish(5)
        return rec.wait_for(lambda m: m.leaf == answer_leaf, 10, f"an answer to {leaf}", start=mark).payload  # type: ignore[no-any-return]

    bad = {
        "not valid JSON": b'{"version": 1, "config": ',
        "exceeds mqtt.max_incoming_kb": b'{"pad": "' + b"x" * 2000 + b'"}',
        "not UTF-8": b'{"version": 1, "x": "\xff\xfe"}',
    }
    try:
        with AgentProcess(cfg) as agent:
            rec.wait_for(lambda m: m.leaf == "results", 30, "a result")
            # let the subscriptions settle: the agent subscribes when it connects
            rec.status("online", 30)
            time.sleep(0.5)
            for problem, payload in bad.items():
                ans = ask("config/set", payload, "config/result")
                assert ans["applied"] is False and ans["version"] is None, ans
                assert problem in ans["errors"][0]["message"], ans
                ans = ask("cmd/selftest", payload, "cmd/result")
                assert ans["command"] == "selftest" and ans["ok"] is False, ans
                assert ans["message"].startswith("rejected: ") and problem in ans["message"], ans
            ans = ask("cmd/bogus", b"", "cmd/result")
            assert ans["command"] == "bogus" and ans["ok"] is False and "unknown command 'bogus'" in ans["message"]
            ans = ask("cmd/selftest", b"", "cmd/result")
            assert ans["command"] == "selftest" and ans["message"], ans  # still served after the rejects

            paused = ask("cmd/pause", b"", "cmd/result")
            assert paused == {**paused, "command": "pause", "ok": True}, paused
            pause_mark = rec.mark()
            time.sleep(1.5)
            assert not [m for m in rec.snapshot()[pause_mark:] if m.leaf == "results"], "results while paused"
            resumed = ask("cmd/resume", b"", "cmd/result")
            assert resumed == {**resumed, "command": "resume", "ok": True}, resumed
            rec.wait_for(lambda m: m.leaf == "results", 5, "a result after resume", start=rec.mark())
            assert agent.running(), agent.output[-4000:]
            stop_agent(agent, rec, rec.mark())
    finally:
        pub.loop_stop()
        pub.disconnect()

    kinds = [m.payload["kind"] for m in rec.snapshot() if m.leaf == "events"]
    # each rejection is also an event: config_rejected for config/set, message_rejected for commands
    assert kinds.count("config_rejected") == len(bad) and kinds.count("message_rejected") == len(bad), kinds
