"""The outbox through a failing disk: ENOSPC (or EIO) at any statement, on real SQLite files.

Two ways of failing it, both real SQLite underneath:
- a connection class (sqlite3's `factory`) whose statements fail, from the Nth statement of
  a chosen kind on, as SQLite fails them on a full disk ("database or disk is full"), or
  whose COMMIT writes and then reports failure, or whose reads fail (EIO);
- a real tmpfs of a few hundred KB that the outbox fills itself (root only; skipped otherwise).

What must hold after every step, against an oracle kept by the test: every message put is
either waiting or was acknowledged (nothing lost, nothing twice), the counts and bytes are
those of the waiting messages, has_waiting() says whether one is not yet handed over, and
after the disk heals retry_disk() puts the memory queue back in the file, where a new
process finds every waiting message in id order with per-topic seqs that go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.mqtt.link import encode
from edge_agent.mqtt.outbox import ROW_OVERHEAD, Outbox, Row

FULL = "database or disk is full"
TOPICS = {"event": "edge/d/events", "result": "edge/d/results"}

# the statements a full disk can make fail, by what they do
KINDS = ("open", "insert", "delete", "seq", "meta", "commit", "checkpoint")


def kind_of(sql: str) -> str | None:
    s = " ".join(sql.split()).upper()
    if s.startswith(("PRAGMA JOURNAL_MODE", "CREATE")):
        return "open"
    if s.startswith("INSERT") and "INTO OUTBOX" in s:
        return "insert"
    if s.startswith("DELETE"):
        return "delete"
    if "INTO SEQS" in s:
        return "seq"
    if "INTO META" in s:
        return "meta"
    if s.startswith("COMMIT"):
        return "commit"
    if "WAL_CHECKPOINT" in s:
        return "checkpoint"
    if s.startswith("SELECT"):
        return "read"
    return None


@dataclass
class Plan:
    """From the `nth` statement of kind `trigger` on, the disk is full until `heal()`:
    `scope` "all" fails every write from then on, "kind" only those of the trigger's kind.
    `written`: the triggering COMMIT writes, then reports failure (once). `reads`: reads
    fail too (EIO) while the disk is failing."""

    trigger: str
    nth: int
    scope: str = "all"
    written: bool = False
    reads: bool = False
    seen: dict[str, int] = field(default_factory=dict)
    failing: bool = False
    healed: bool = False
    failures: int = 0

    def before(self, sql: str) -> bool:
        """Raise if this statement fails; True when it is to write first and fail after."""
        kind = kind_of(sql)
        if kind is None or self.healed:
            return False
        if kind != "read":
            self.seen[kind] = self.seen.get(kind, 0) + 1
            if not self.failing and kind == self.trigger and self.seen[kind] >= self.nth:
                self.failing = True
                if self.written and kind == "commit":
                    return True
        if not self.failing:
            return False
        if kind == "read" and not self.reads:
            return False
        if self.scope == "kind" and kind not in (self.trigger, "read"):
            return False
        self.failures += 1
        raise sqlite3.OperationalError("disk I/O error" if kind == "read" else FULL)

    def heal(self) -> None:
        self.healed = True


def faulty(plan: Plan) -> type[sqlite3.Connection]:
    class FaultyConnection(sqlite3.Connection):
        """A real SQLite connection whose statements fail as the plan says."""

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            after = plan.before(sql)
            cur = super().execute(sql, parameters)
            if after:
                raise sqlite3.OperationalError(FULL)  # written, and reported failed
            return cur

        def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
            plan.before(sql)
            return super().executemany(sql, parameters)

        def executescript(self, script: str, /) -> sqlite3.Cursor:
            plan.before(script.strip())
            return super().executescript(script)

    return FaultyConnection


# ---- the oracle ----------------------------------------------------------------------------------
@dataclass
class Oracle:
    """What the outbox must hold: (topic, seq) → size of every message put and not acknowledged."""

    box: Outbox
    waiting: dict[tuple[str, int], int] = field(default_factory=dict)
    in_flight: dict[int, tuple[str, int]] = field(default_factory=dict)  # row id → key, as the sender keeps it
    last_seq: dict[str, int] = field(default_factory=dict)
    n: int = 0

    def put(self, kind: str) -> None:
        topic = TOPICS[kind]
        self.n += 1
        body = {"kind": kind, "n": self.n, "pad": "x" * (self.n % 7)}
        put = self.box.put(topic, lambda seq: {"seq": seq, **body}, qos=1, kind=kind)
        assert put.dropped_events == put.dropped_results == 0, "the bound is not what this test is about"
        assert put.seq == self.last_seq.get(topic, 0) + 1, f"{topic}: seq {put.seq} after {self.last_seq.get(topic)}"
        self.last_seq[topic] = put.seq
        self.waiting[(topic, put.seq)] = len(encode({"seq": put.seq, **body})) + len(topic) + ROW_OVERHEAD

    def send(self, limit: int) -> None:
        """What the sender does: hand over the oldest rows not yet handed over."""
        for row in self.box.pending(exclude=set(self.in_flight), limit=limit):
            self.in_flight[row.id] = key(row)
            self.box.in_flight[row.id] = row.size

    def ack(self, count: int) -> None:
        for row_id in sorted(self.in_flight)[:count]:
            k = self.in_flight.pop(row_id)
            size = self.box.in_flight.pop(row_id)
            self.box.ack(row_id, size)
            del self.waiting[k]

    def check(self, *, complete: bool) -> None:
        """The invariants. `complete`: every waiting row can be read (the file is readable)."""
        rows = self.box.pending(exclude=set(), limit=1_000_000)
        keys = [key(r) for r in rows]
        assert len(set(keys)) == len(keys), f"a message twice: {keys}"
        assert [r.id for r in rows] == sorted(r.id for r in rows)
        for topic in TOPICS.values():
            seqs = [s for t, s in keys if t == topic]
            assert seqs == sorted(seqs), f"{topic} out of order: {seqs}"
        assert set(keys) <= set(self.waiting), f"messages that should be gone: {set(keys) - set(self.waiting)}"
        if complete:
            assert set(keys) == set(self.waiting), f"lost: {sorted(set(self.waiting) - set(keys))}"
            assert all(r.size == self.waiting[key(r)] for r in rows)
        depth = self.box.depth()
        assert depth.count == len(self.waiting), (depth, len(self.waiting), self.box.storage_error)
        assert depth.bytes == sum(self.waiting.values()), (depth, sum(self.waiting.values()))
        assert self.box.has_waiting() == (len(self.waiting) > len(self.in_flight)), (depth, self.in_flight)


def key(row: Row) -> tuple[str, int]:
    return row.topic, int(json.loads(row.payload)["seq"])


def in_file(path: Path) -> list[tuple[str, int]]:
    """The messages a new process finds, in the order it sends them."""
    box = Outbox(path, max_bytes=1 << 30)
    try:
        assert box.storage_error is None
        return [key(r) for r in box.pending(exclude=set(), limit=1_000_000)]
    finally:
        box.close()


# ---- a failure at each statement ---------------------------------------------------------------------
OPS = st.lists(
    st.sampled_from(["event", "event", "result", "send", "ack", "save_seqs", "retry"]), min_size=5, max_size=40
)


def run_ops(oracle: Oracle, ops: list[str], *, complete: bool) -> None:
    for op in ops:
        if op in TOPICS:
            oracle.put(op)
        elif op == "send":
            oracle.send(3)
        elif op == "ack":
            oracle.ack(2)
        elif op == "save_seqs":
            oracle.box.next_seq("edge/d/live")
            oracle.box.save_seqs()
        else:
            oracle.box.retry_disk()  # while the disk still fails: must change nothing that matters
        oracle.check(complete=complete or oracle.box.depth().on_disk)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    trigger=st.sampled_from(KINDS),
    nth=st.integers(1, 6),
    scope=st.sampled_from(["all", "kind"]),
    written=st.booleans(),
    reads=st.booleans(),
    before=OPS,
    during=OPS,
    after=OPS,
)
def test_a_full_disk_at_any_statement_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    trigger: str,
    nth: int,
    scope: str,
    written: bool,
    reads: bool,
    before: list[str],
    during: list[str],
    after: list[str],
) -> None:
    path = tmp_path_factory.mktemp("box") / "outbox.sqlite"
    plan = Plan(trigger, nth, scope, written=written and trigger == "commit", reads=reads)
    if trigger == "open":
        plan.nth = 1  # the disk is full from the start
    box = Outbox(path, max_bytes=1 << 20, factory=faulty(plan))
    oracle = Oracle(box)
    # a readable file keeps its rows readable; only reads failing (EIO) may hide some for a while
    run_ops(oracle, before + during, complete=not reads)
    plan.heal()
    assert box.retry_disk(), box.storage_error
    assert box.storage_error is None and box.depth().on_disk
    oracle.check(complete=True)
    run_ops(oracle, after, complete=True)
    expected = sorted(oracle.waiting, key=lambda k: k[::-1])  # any order; the id order is checked below
    box.close()
    found = in_file(path)
    assert sorted(found, key=lambda k: k[::-1]) == expected, "the file does not hold what waits"
    for topic in TOPICS.values():  # per topic in seq order, as sent
        seqs = [s for t, s in found if t == topic]
        assert seqs == sorted(seqs), f"{topic}: {seqs}"
    # a new process goes on with the numbering: no seq reused
    again = Outbox(path, max_bytes=1 << 20)
    for topic in TOPICS.values():
        assert again.put(topic, lambda seq: {"seq": seq}, qos=1, kind="event").seq == oracle.last_seq.get(topic, 0) + 1
    assert not again.recovered_unclean
    again.close()


def test_a_reopen_on_a_full_disk_keeps_the_memory_queue_counted(tmp_path: Path) -> None:
    """The case of the report: the disk fills, messages wait in memory, the retry reopens the
    file and fails on its first write. The memory queue must stay counted and sent (it was
    dropped from the count: has_waiting() went False and sending stopped)."""
    plan = Plan("insert", 3)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, factory=faulty(plan))
    oracle = Oracle(box)
    for _ in range(6):
        oracle.put("event")
    assert box.storage_error is not None and FULL in box.storage_error
    assert not box.retry_disk()  # still full: the reopen's writes fail
    oracle.check(complete=True)
    assert box.has_waiting()
    oracle.send(10)  # both places, in id order
    assert len(oracle.in_flight) == 6
    oracle.ack(6)
    oracle.check(complete=True)
    assert not box.has_waiting() and box.depth().count == 0
    plan.heal()
    assert box.retry_disk()
    box.close()
    assert in_file(tmp_path / "outbox.sqlite") == []


def test_acks_while_the_file_takes_no_writes_are_kept_until_it_does(tmp_path: Path) -> None:
    """Rows in a file that takes no writes are still sent from it; their acknowledgements are
    remembered and the rows deleted once it takes writes, so a restart does not send them again."""
    path = tmp_path / "outbox.sqlite"
    plan = Plan("delete", 1)
    box = Outbox(path, max_bytes=1 << 20, factory=faulty(plan))
    oracle = Oracle(box)
    for _ in range(30):
        oracle.put("event")
    for _ in range(10):
        oracle.send(3)
        oracle.ack(3)
        oracle.check(complete=True)
    assert box.storage_error is not None and not box.depth().on_disk
    assert len(oracle.waiting) == 0
    plan.heal()
    assert box.retry_disk()
    box.close()
    assert in_file(path) == []


# ---- a real full filesystem ------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem under `path`."""
    filler = path / "filler"
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 16, 512):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)
    return filler


def test_a_tmpfs_filled_mid_run(tmp_path: Path) -> None:
    """256 KB of disk, a 64 KB bound: a file takes every free byte while messages are being put.
    The messages go on into memory; the broker takes them (from the file and from memory, in
    order); once the other file is gone, everything that waits goes back to disk."""
    with tiny_tmpfs(tmp_path / "state", "256k") as state:
        path = state / "outbox.sqlite"
        box = Outbox(path, max_bytes=64 * 1024)
        try:
            oracle = Oracle(box)
            for i in range(20):
                oracle.put("event" if i % 3 else "result")
            filler = fill(state)
            full_at = None
            for i in range(200):  # whichever statement meets the full disk first
                oracle.put("event" if i % 3 else "result")
                if full_at is None and box.storage_error is not None:
                    full_at = i
                oracle.check(complete=True)
            assert full_at is not None and FULL in str(box.storage_error)
            box.retry_disk()  # whether a checkpoint made room or not, nothing changes that matters
            oracle.check(complete=True)
            # the broker is back: everything is sent (file rows and memory rows, in order) and acknowledged
            sent: list[tuple[str, int]] = []
            while box.has_waiting():
                before = set(oracle.in_flight)
                oracle.send(20)
                sent += [oracle.in_flight[i] for i in sorted(set(oracle.in_flight) - before)]
                oracle.ack(20)
                oracle.check(complete=True)
            for topic in TOPICS.values():
                seqs = [s for t, s in sent if t == topic]
                assert seqs == list(range(1, len(seqs) + 1)), f"{topic}: {seqs[:20]}..."
            for _ in range(20):  # new messages meanwhile
                oracle.put("event")
            filler.unlink()
            assert box.retry_disk(), box.storage_error
            assert box.depth().on_disk
            oracle.check(complete=True)
        finally:
            box.close()
        assert sorted(in_file(path)) == sorted(oracle.waiting)
        print(f"\n256 KB tmpfs filled after 20 messages: the outbox met it {full_at} messages later; {len(sent)} sent")
