"""The outbox: every event (and results, when configured) is stored before it is sent, and
removed only once the broker acknowledged it, so nothing is lost across broker outages,
agent crashes and power cuts.

SQLite in WAL mode with synchronous=FULL: a committed row survives a power cut. Messages
keep one id order whether they sit on disk or, while the disk cannot be written (a read-only
or full SD card), in a bounded memory queue; they go back to disk when it can be written.
The store is bounded by bytes: results are dropped oldest-first before any event; dropped
events are counted so that the agent can say how many (`outbox_overflow`).

Sequence numbers are per topic, monotonic and persisted. A topic whose seq is not written
with each message (live results) is saved periodically; after an unclean stop those topics
jump ahead by SEQ_JUMP_AFTER_CRASH, so a consumer sees a gap, never a reused number.

Used from one thread at a time (the agent's loop), never concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.mqtt.link import encode

log = logging.getLogger(__name__)

ROW_OVERHEAD = 64  # bytes counted per row beyond its topic and payload (SQLite's own bookkeeping)
SEQ_JUMP_AFTER_CRASH = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seqs (topic TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes
    qos: int
    kind: str  # "event" | "result"
    created: float

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + ROW_OVERHEAD


@dataclass(frozen=True)
class Put:
    seq: int
    dropped_events: int = 0
    dropped_results: int = 0


@dataclass(frozen=True)
class Depth:
    count: int
    bytes: int
    oldest_age_s: float | None
    on_disk: bool


class Outbox:
    def __init__(self, path: Path | None, *, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._mem: dict[int, Row] = {}  # rows waiting while the disk cannot be written
        self._acked_unremoved: set[int] = set()  # on disk, acknowledged, not yet deletable
        # rows handed to the broker link, not yet acknowledged (id → size, kept by the sender):
        # never dropped, since paho holds its own copy and delivers it after a reconnect anyway,
        # and not counted against the bound (at most the sender's window of them)
        self.in_flight: dict[int, int] = {}
        self._seqs: dict[str, int] = {}
        self._dirty_seqs: set[str] = set()
        self._jumped: set[str] = set()
        self._bytes = 0
        self._next_id = 1
        self.storage_error: str | None = None
        self.recovered_unclean = False
        self._opened = False  # once opened, a reopen (after a storage error) is no crash recovery
        if path is not None:
            self._open_disk()
        else:
            self.storage_error = "no state_dir: the outbox is kept in memory"

    # ---- disk ---------------------------------------------------------------------------
    def _open_disk(self) -> None:
        assert self.path is not None
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one thread at a time (the agent's loop), though not always the one that built it
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                # a bounded page cache (SQLite's default is 2 MB): the outbox is written and read
                # in order, so a small cache costs nothing, and RSS does not jump at the first outage
                db.execute("PRAGMA cache_size=-256")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError as err:
                db.close()
                if "not a database" in str(err) or "malformed" in str(err):
                    # keep the evidence, start a fresh store: a corrupt file must not stop the agent
                    aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
                    self.path.rename(aside)
                    log.error("outbox %s is corrupt (%s): moved to %s, starting empty", self.path, err, aside.name)
                    return self._open_disk()
                raise
            rows = db.execute("SELECT id, topic, length(payload) FROM outbox").fetchall()
            self._bytes = sum(n + len(t) + ROW_OVERHEAD for _, t, n in rows)
            self._next_id = max([r[0] for r in rows] + [self._next_id - 1]) + 1
            # numbers handed out while the disk was away (memory mode) are kept: never go back
            for topic, seq in db.execute("SELECT topic, seq FROM seqs").fetchall():
                self._seqs[topic] = max(seq, self._seqs.get(topic, 0))
            if not self._opened:
                clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
                self.recovered_unclean = clean is not None and clean[0] != "1"
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
            self._db = db
            self._opened = True
            self.storage_error = None
        except (sqlite3.Error, OSError) as err:
            if db is not None:  # opened, then failed (a full or read-only disk): no leaked handle
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._fail(f"cannot open the outbox {self.path}: {err}")

    def _fail(self, message: str) -> None:
        if self.storage_error is None:
            log.error("%s: keeping queued messages in memory until the disk can be written", message)
        self.storage_error = message
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _reopened(self) -> bool:
        self._open_disk()
        return self._db is not None

    def retry_disk(self) -> bool:
        """Go back to disk when it can be written again; move the memory queue there."""
        if self._db is not None or self.path is None:
            return self._db is not None
        if not self._reopened():
            return False
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                    [(r.id, r.topic, r.payload, r.qos, r.kind, r.created) for r in self._mem.values()],
                )
                db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in self._acked_unremoved])
                db.executemany("INSERT OR REPLACE INTO seqs VALUES (?, ?)", list(self._seqs.items()))
        except sqlite3.Error as err:
            self._fail(f"outbox write failed: {err}")
            return False
        self._mem.clear()
        self._acked_unremoved.clear()
        self._dirty_seqs.clear()
        self._recount()
        log.info("outbox back on disk at %s", self.path)
        return True

    def _recount(self) -> None:
        if self._db is not None:
            rows = self._db.execute("SELECT topic, length(payload) FROM outbox").fetchall()
            self._bytes = sum(n + len(t) + ROW_OVERHEAD for t, n in rows)

    @contextlib.contextmanager
    def _tx(self) -> Any:
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- sequence numbers ---------------------------------------------------------------
    def next_seq(self, topic: str) -> int:
        """A seq for a message that does not go through the outbox (saved by save_seqs)."""
        n = self._seqs.get(topic, 0)
        if self.recovered_unclean and topic not in self._jumped:
            # the last numbers handed out before the crash may never have been saved
            self._jumped.add(topic)
            if n:
                n += SEQ_JUMP_AFTER_CRASH
        n += 1
        self._seqs[topic] = n
        self._dirty_seqs.add(topic)
        return n

    def save_seqs(self) -> None:
        if self._db is None or not self._dirty_seqs:
            return
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO seqs VALUES (?, ?)", [(t, self._seqs[t]) for t in self._dirty_seqs]
                )
        except sqlite3.Error as err:
            self._fail(f"outbox write failed: {err}")
            return
        self._dirty_seqs.clear()

    # ---- queue --------------------------------------------------------------------------
    def put(
        self, topic: str, make_payload: Callable[[int], dict[str, Any]], *, qos: int, kind: str, evict: bool = True
    ) -> Put:
        """Store one message; its payload is made with the topic's next seq.

        `evict=False` stores it without pushing anything out (the one notice that says how many
        events were dropped): the bound is exceeded by that row until the next put makes room.
        """
        seq = self._seqs.get(topic, 0) + 1
        payload = encode(make_payload(seq))
        row = Row(self._next_id, topic, payload, qos, kind, self._clock())
        dropped_events, dropped_results = self._make_room(row.size, kind) if evict else (0, 0)
        self._next_id += 1
        self._seqs[topic] = seq
        if kind == "result" and evict and self._waiting() + row.size > self.max_bytes:
            # only events left, and a result may not push one out: this result is the one dropped
            # (its seq is spent, so the consumer sees the gap)
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error), self._tx() as db:
                    db.execute("INSERT OR REPLACE INTO seqs VALUES (?, ?)", (topic, seq))
            return Put(seq, dropped_events, dropped_results + 1)
        if self._db is not None:
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                        (row.id, row.topic, row.payload, row.qos, row.kind, row.created),
                    )
                    db.execute("INSERT OR REPLACE INTO seqs VALUES (?, ?)", (topic, seq))
            except sqlite3.Error as err:
                self._fail(f"outbox write failed: {err}")
                self._mem[row.id] = row
        else:
            self._mem[row.id] = row
        self._bytes += row.size
        return Put(seq, dropped_events, dropped_results)

    def _waiting(self) -> int:
        """The bytes counted against the bound: all but those handed to the link."""
        return self._bytes - sum(self.in_flight.values())

    def _make_room(self, size: int, kind: str) -> tuple[int, int]:
        dropped_events = dropped_results = 0
        while self._waiting() + size > self.max_bytes:
            victim = self._oldest("result") or (self._oldest("event") if kind == "event" else None)
            if victim is None:
                break  # a result may not push out an event: it is itself the oldest result
            self._remove(victim)
            if victim.kind == "event":
                dropped_events += 1
            else:
                dropped_results += 1
        return dropped_events, dropped_results

    def _oldest(self, kind: str) -> Row | None:
        """The oldest row of a kind that may be dropped (not one handed to the link)."""
        candidates: list[Row] = []
        if self._db is not None:
            for r in self._db.execute(
                "SELECT id, topic, payload, qos, kind, created FROM outbox WHERE kind = ? ORDER BY id LIMIT ?",
                (kind, len(self.in_flight) + 1),
            ):
                if r[0] not in self.in_flight:
                    candidates.append(Row(*r))
                    break
        candidates += [r for r in self._mem.values() if r.kind == kind and r.id not in self.in_flight][:1]
        return min(candidates, key=lambda r: r.id) if candidates else None

    def _remove(self, row: Row) -> None:
        if self._mem.pop(row.id, None) is None and self._db is not None:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
        self._bytes -= row.size

    def pending(self, *, exclude: set[int], limit: int) -> list[Row]:
        """The oldest rows not yet handed to the broker link, in id order."""
        rows: list[Row] = []
        if self._db is not None:
            skip = exclude | self._acked_unremoved
            for r in self._db.execute(
                "SELECT id, topic, payload, qos, kind, created FROM outbox ORDER BY id LIMIT ?", (limit + len(skip),)
            ):
                if r[0] not in skip:
                    rows.append(Row(*r))
        rows += [r for r in self._mem.values() if r.id not in exclude]
        rows.sort(key=lambda r: r.id)
        return rows[:limit]

    def ack(self, row_id: int, size: int) -> None:
        """The broker has the message: forget it."""
        if self._mem.pop(row_id, None) is not None:
            self._bytes -= size
            return
        if self._db is None:
            self._acked_unremoved.add(row_id)
            self._bytes -= size
            return
        try:
            if self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount == 0:
                return  # dropped meanwhile: its bytes were already given back
        except sqlite3.Error as err:
            self._fail(f"outbox write failed: {err}")
            self._acked_unremoved.add(row_id)
        self._bytes -= size

    def has_waiting(self) -> bool:
        """Cheap: whether rows wait to be handed to the link (no query)."""
        return self._waiting() > 0

    def depth(self) -> Depth:
        count = len(self._mem)
        oldest = min((r.created for r in self._mem.values()), default=None)
        if self._db is not None:
            n, first = self._db.execute("SELECT count(*), min(created) FROM outbox").fetchone()
            count += int(n) - len(self._acked_unremoved)
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        age = None if oldest is None else round(max(0.0, self._clock() - oldest), 3)
        return Depth(count, max(self._bytes, 0), age, self._db is not None)

    def close(self) -> None:
        self.save_seqs()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
                self._db.close()
            self._db = None
