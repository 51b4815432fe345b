"""The outbox on a real SQLite file: order, acknowledgement, bounds, seqs, crashes, corruption."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.mqtt.outbox import ROW_OVERHEAD, SEQ_JUMP_AFTER_CRASH, Outbox


def event(i: int) -> object:
    return lambda seq: {"seq": seq, "kind": "nan_output", "n": i}


def test_rows_come_out_in_order_and_leave_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1_000_000)
    seqs = [box.put("edge/d/events", event(i), qos=1, kind="event").seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    rows = box.pending(exclude=set(), limit=10)
    assert [json.loads(r.payload)["n"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r.id for r in box.pending(exclude={rows[0].id}, limit=2)] == [rows[1].id, rows[2].id]
    box.ack(rows[0].id, rows[0].size)
    assert box.depth().count == 4
    box.close()
    # a restart finds the rest, and the seq goes on
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1_000_000)
    assert [json.loads(r.payload)["n"] for r in box.pending(exclude=set(), limit=10)] == [1, 2, 3, 4]
    assert box.put("edge/d/events", event(5), qos=1, kind="event").seq == 6
    assert not box.recovered_unclean


def test_results_go_before_events_when_full(tmp_path: Path) -> None:
    one = len(json.dumps({"seq": 1, "kind": "nan_output", "n": 0}, separators=(",", ":"))) + len("t/e") + ROW_OVERHEAD
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10 * one)
    for i in range(4):
        box.put("t/e", event(i), qos=1, kind="event")
    for i in range(6):
        box.put("t/r", event(i), qos=0, kind="result")
    put = box.put("t/e", event(99), qos=1, kind="event")
    assert put.dropped_results >= 1 and put.dropped_events == 0  # the oldest results made room
    # a result never pushes out an event: with only events left, it drops older results
    for i in range(20):
        box.put("t/e", event(100 + i), qos=1, kind="event")
    kinds = [r.kind for r in box.pending(exclude=set(), limit=100)]
    assert "result" not in kinds
    assert box.depth().bytes <= 10 * one + one


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["event", "result"]), min_size=1, max_size=60), st.integers(3, 12))
def test_bound_and_counts_hold(tmp_path_factory: object, kinds: list[str], cap_rows: int) -> None:
    tmp = tmp_path_factory.mktemp("box")  # type: ignore[attr-defined]
    size = len(json.dumps({"seq": 10, "kind": "nan_output", "n": 10}, separators=(",", ":"))) + 3 + ROW_OVERHEAD
    box = Outbox(tmp / "o.sqlite", max_bytes=cap_rows * size)
    dropped = {"event": 0, "result": 0}
    for i, k in enumerate(kinds):
        put = box.put(
            "t/e" if k == "event" else "t/r",
            lambda seq, i=i: {"seq": seq % 10, "kind": "nan_output", "n": i % 10},
            qos=1,
            kind=k,
        )
        dropped["event"] += put.dropped_events
        dropped["result"] += put.dropped_results
        assert box.depth().bytes <= cap_rows * size
    left = box.pending(exclude=set(), limit=1000)
    # every message is either still queued or counted as dropped
    assert len(left) + dropped["event"] + dropped["result"] == len(kinds)
    assert sum(r.kind == "event" for r in left) + dropped["event"] == kinds.count("event")
    # events are dropped only when no result is left to drop
    if dropped["event"]:
        assert all(r.kind == "event" for r in left)
    box.close()


def test_seq_jumps_after_a_crash_for_unsaved_topics(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=1_000_000)
    assert [box.next_seq("t/results") for _ in range(3)] == [1, 2, 3]
    box.save_seqs()
    box.next_seq("t/results")  # 4: handed out, never saved — then the process dies
    box.put("t/events", event(0), qos=1, kind="event")
    del box  # no close(): an unclean stop
    box = Outbox(path, max_bytes=1_000_000)
    assert box.recovered_unclean
    assert box.next_seq("t/results") == 3 + SEQ_JUMP_AFTER_CRASH + 1  # a gap, never a reused number
    assert box.put("t/events", event(1), qos=1, kind="event").seq == 2  # written with each row: no jump
    box.close()
    box = Outbox(path, max_bytes=1_000_000)
    assert not box.recovered_unclean


def test_a_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, max_bytes=1_000_000)
    assert box.storage_error is None and box.depth().on_disk
    assert box.put("t", event(0), qos=1, kind="event").seq == 1
    assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))


def test_memory_fallback_and_return_to_disk(tmp_path: Path) -> None:
    """A state_dir that cannot be made (a file in its place) keeps messages in memory, in order."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state folder should be")
    box = Outbox(blocker / "outbox.sqlite", max_bytes=1_000_000)
    assert box.storage_error is not None and not box.depth().on_disk
    for i in range(3):
        box.put("t", event(i), qos=1, kind="event")
    first = box.pending(exclude=set(), limit=1)[0]
    box.ack(first.id, first.size)
    assert box.depth().count == 2
    assert not box.retry_disk()
    blocker.unlink()
    assert box.retry_disk()
    assert box.storage_error is None and box.depth().on_disk
    assert [json.loads(r.payload)["n"] for r in box.pending(exclude=set(), limit=10)] == [1, 2]
    assert box.put("t", event(3), qos=1, kind="event").seq == 4
    box.close()
    with sqlite3.connect(blocker / "outbox.sqlite") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3
