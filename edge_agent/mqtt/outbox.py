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

A failing disk (ENOSPC, EIO, a read-only remount) can make any statement fail: an insert, a
delete, a seq or meta write, a COMMIT (which may even have written), the checkpoint, the open.
The state stays true through each of them because it is kept as facts, not guesses:
- every waiting row is in exactly one place, the file or the memory queue (`_mem`); after a
  write reported failure, the file is asked whether the row got there;
- the counts are kept per place (`_disk_*`, `_mem_bytes`) and recounted from the file whenever
  it is opened, so a reopen never forgets the memory queue (it used to: has_waiting() went
  False with rows waiting and sending stopped);
- rows acknowledged or dropped while the file takes no writes are remembered (`_gone`) and
  deleted when it does; rows on a file that can still be read keep being sent from it;
- `retry_disk` frees the WAL, deletes what is gone, then moves the memory queue to the file
  in one transaction: all of it, keeping ids (so order and seqs), or none.

Used from one thread at a time (the agent's loop), never concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.mqtt.link import encode

log = logging.getLogger(__name__)

ROW_OVERHEAD = 64  # bytes counted per row beyond its topic and payload (SQLite's own bookkeeping)
SEQ_JUMP_AFTER_CRASH = 100_000
# The WAL is checkpointed (and cut back to this size) after about as many pages as the bound
# holds, within SQLite's default: a small state_dir is not filled by the log of a small outbox
PAGE_SIZE = 4096
WAL_PAGES_MIN, WAL_PAGES_MAX = 16, 1000

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
_ROW_COLUMNS = "SELECT id, topic, payload, qos, kind, created FROM outbox"


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
    def __init__(
        self,
        path: Path | None,
        *,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        factory: type[sqlite3.Connection] = sqlite3.Connection,
    ) -> None:
        """`factory`: the class of the SQLite connection (the tests make statements fail with it)."""
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        self._factory = factory
        self._db: sqlite3.Connection | None = None
        # rows waiting while the disk cannot be written, in id order (put order)
        self._mem: dict[int, Row] = {}
        self._mem_bytes = 0
        # rows waiting in the file (not counting those in _gone); while the file cannot be opened
        # these are the last known figures: the rows still wait there, to be sent once it can
        self._disk_count = 0
        self._disk_bytes = 0
        # in the file, acknowledged or dropped while it took no writes: deleted once it does
        self._gone: set[int] = set()
        # in memory after a write that reported failure while the file could not be asked whether
        # it got there: if one leaves the outbox before that is known, it is gone from the file too
        self._unsure: set[int] = set()
        # per scan (None: all rows, or one kind): every row in the file below it is in _gone, so
        # a long run of them is stepped over once, not at every pump
        self._floor: dict[str | None, int] = {}
        # rows handed to the broker link, not yet acknowledged (id → size, kept by the sender):
        # never dropped, since paho holds its own copy and delivers it after a reconnect anyway,
        # and not counted against the bound (at most the sender's window of them)
        self.in_flight: dict[int, int] = {}
        self._seqs: dict[str, int] = {}
        self._dirty_seqs: set[str] = set()
        self._jumped: set[str] = set()
        self._next_id = 1
        self.storage_error: str | None = None
        self.recovered_unclean = False
        self._opened = False  # the file was read once: a reopen (after a storage error) is no crash recovery
        self._marked = False  # meta 'clean' = '0' written for this run
        self._wal_pages = max(WAL_PAGES_MIN, min(WAL_PAGES_MAX, max_bytes // PAGE_SIZE))
        if path is not None:
            if self._connect():
                self._sync()
        else:
            self.storage_error = "no state_dir: the outbox is kept in memory"

    # ---- the file -------------------------------------------------------------------------
    @property
    def _writable(self) -> bool:
        return self._db is not None and self.storage_error is None

    def _connect(self) -> bool:
        """Open the file and read its state; False when it cannot be opened or read."""
        assert self.path is not None
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one thread at a time (the agent's loop), though not always the one that built it
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0, check_same_thread=False, factory=self._factory
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                # a bounded page cache (SQLite's default is 2 MB): the outbox is written and read
                # in order, so a small cache costs nothing, and RSS does not jump at the first outage
                db.execute("PRAGMA cache_size=-256")
                db.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
                db.execute(f"PRAGMA journal_size_limit={self._wal_pages * PAGE_SIZE}")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError as err:
                db.close()
                db = None
                if "not a database" in str(err) or "malformed" in str(err):
                    # keep the evidence, start a fresh store: a corrupt file must not stop the agent
                    aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
                    self.path.rename(aside)
                    log.error("outbox %s is corrupt (%s): moved to %s, starting empty", self.path, err, aside.name)
                    return self._connect()
                raise
            self._db = db
            self._load(db)
        except (sqlite3.Error, OSError) as err:
            self._close_db()
            if db is not None:  # opened, then failed (a full or read-only disk): no leaked handle
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._failed(f"cannot open the outbox {self.path}: {err}")
            return False
        return True

    def _load(self, db: sqlite3.Connection) -> None:
        """Count what waits in the file. A row also in the memory queue (its write reported a
        failure but got there) stays in the file only; what is gone stays gone."""
        count = size = 0
        gone: set[int] = set()
        both: list[int] = []
        top = self._next_id - 1
        for row_id, topic_len, payload_len in db.execute("SELECT id, length(topic), length(payload) FROM outbox"):
            top = max(top, row_id)
            if row_id in self._gone:
                gone.add(row_id)
                continue
            if row_id in self._mem:
                both.append(row_id)
            count += 1
            size += payload_len + topic_len + ROW_OVERHEAD
        seqs = db.execute("SELECT topic, seq FROM seqs").fetchall()
        clean = None if self._opened else db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
        # all read: only now is the state replaced (a read failing halfway changes nothing)
        for row_id in both:
            self._mem_bytes -= self._mem.pop(row_id).size
        self._disk_count, self._disk_bytes, self._gone = count, size, gone
        self._unsure.clear()  # known now: in the file (its memory copy dropped above), or not
        self._next_id = top + 1
        self._floor.clear()
        # numbers handed out while the file was away (memory queue) are kept: never go back
        for topic, seq in seqs:
            self._seqs[topic] = max(seq, self._seqs.get(topic, 0))
        if not self._opened:
            self.recovered_unclean = clean is not None and clean[0] != "1"
            self._opened = True

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _failed(self, message: str) -> None:
        if self.storage_error is None:
            log.error("%s: keeping queued messages in memory until the disk can be written", message)
        self.storage_error = message

    def _write_failed(self, err: sqlite3.Error) -> None:
        """A write failed: the file keeps being read (and its rows sent), writes go to memory."""
        self._failed(f"outbox write failed: {err}")

    def _read_failed(self, err: sqlite3.Error) -> None:
        """The file cannot even be read: closed; its rows wait there until it is reopened."""
        self._failed(f"outbox read failed: {err}")
        self._close_db()

    def _on_disk(self, row_id: int) -> bool | None:
        """Whether the file holds a row (after a write that reported failure); None: unknown."""
        if self._db is None:
            return None
        try:
            return self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (row_id,)).fetchone() is not None
        except sqlite3.Error as err:
            self._read_failed(err)
            return None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            # SQLite may or may not have rolled back by itself (SQLITE_FULL, SQLITE_IOERR): ask
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if db.in_transaction:  # stuck in a transaction: this connection can write no more
                self._close_db()
            raise

    def retry_disk(self) -> bool:
        """Go back to disk when it can be written again; move the memory queue there."""
        if self.path is None:
            return False
        if self._db is None and not self._connect():
            return False
        return self._sync()

    def _sync(self) -> bool:
        """Write everything that waits for the disk; True when it is all there."""
        assert self._db is not None
        was_failing = self.storage_error is not None
        # room first: a WAL that filled the disk is copied into the file and cut back
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as err:
            if self._disk_count == 0 and not self._start_afresh(err):
                return False
        if was_failing and not self._has_room():
            return False
        rows = list(self._mem.values())
        try:
            if self._gone:
                with self._tx() as tx:
                    tx.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in sorted(self._gone)])
                self._gone.clear()  # their bytes were given back when they went
            with self._tx() as tx:
                tx.executemany(
                    "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                    [(r.id, r.topic, r.payload, r.qos, r.kind, r.created) for r in rows],
                )
                tx.executemany("INSERT OR REPLACE INTO seqs VALUES (?, ?)", list(self._seqs.items()))
                if not self._marked:
                    tx.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
        except sqlite3.Error as err:
            self._write_failed(err)
            there = self._on_disk(rows[-1].id) if rows else False
            if there:  # reported failed, yet committed (one transaction)
                self._moved_to_disk(rows)
            elif there is None:
                self._unsure.update(r.id for r in rows)
            return False
        self._moved_to_disk(rows)
        self._dirty_seqs.clear()
        self._marked = True
        self.storage_error = None
        if was_failing:
            log.info("outbox back on disk at %s", self.path)
        return True

    def _has_room(self) -> bool:
        """Whether the disk can take what waits in memory (in the WAL, then the file) and a WAL's
        worth of messages after it. A checkpoint frees a little room on a disk still full: going
        back on disk for a few messages would only fail again (storage_error, storage_recovered,
        storage_error every retry)."""
        assert self.path is not None
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return True  # cannot tell: the writes will
        needed = 2 * self._mem_bytes + self._wal_pages * PAGE_SIZE
        if fs.f_bavail * fs.f_frsize >= needed:
            return True
        self._failed(
            f"outbox write failed: {fs.f_bavail * fs.f_frsize} bytes free in {self.path.parent}, {needed} needed"
        )
        return False

    def _start_afresh(self, err: sqlite3.Error) -> bool:
        """A WAL cannot be copied into its file when that must grow on a full disk, and until it
        is the WAL cannot be cut back: a disk filled by the outbox's own log stays full. Once the
        file holds no waiting message (all sent, or dropped), it is replaced by an empty one; the
        seqs are kept (in memory, written with the first transaction), so none is reused."""
        assert self.path is not None
        self._close_db()
        try:
            for suffix in ("-wal", "-shm", ""):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        except OSError as unlink_err:
            self._failed(f"outbox write failed: {err}; cannot remove {self.path}: {unlink_err}")
            return False
        log.warning(
            "outbox %s: its log could not be checkpointed (%s) and it held nothing waiting: started afresh",
            self.path,
            err,
        )
        self._gone.clear()
        self._marked = False
        return self._connect()

    def _moved_to_disk(self, rows: list[Row]) -> None:
        for r in rows:
            del self._mem[r.id]
            self._unsure.discard(r.id)
            self._disk_count += 1
            self._disk_bytes += r.size
            self._mem_bytes -= r.size
        if rows:
            self._floor.clear()  # they may lie below a scan's floor

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
        if not self._writable or not self._dirty_seqs:
            return
        try:
            with self._tx() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO seqs VALUES (?, ?)", [(t, self._seqs[t]) for t in self._dirty_seqs]
                )
        except sqlite3.Error as err:
            self._write_failed(err)
            return
        self._dirty_seqs.clear()

    # ---- queue --------------------------------------------------------------------------
    def put(
        self, topic: str, make_payload: Callable[[int], dict[str, object]], *, qos: int, kind: str, evict: bool = True
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
            self._dirty_seqs.add(topic)
            self.save_seqs()
            return Put(seq, dropped_events, dropped_results + 1)
        self._store(row)
        return Put(seq, dropped_events, dropped_results)

    def _store(self, row: Row) -> None:
        if self._writable:
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                        (row.id, row.topic, row.payload, row.qos, row.kind, row.created),
                    )
                    db.execute("INSERT OR REPLACE INTO seqs VALUES (?, ?)", (row.topic, self._seqs[row.topic]))
            except sqlite3.Error as err:
                self._write_failed(err)
                there = self._on_disk(row.id)
                if there:  # reported failed, yet committed (with its seq)
                    self._disk_count += 1
                    self._disk_bytes += row.size
                    return
                if there is None:  # the file cannot be asked: the memory copy is kept, a reopen finds out
                    self._unsure.add(row.id)
            else:
                self._disk_count += 1
                self._disk_bytes += row.size
                return
        self._dirty_seqs.add(row.topic)
        self._mem[row.id] = row
        self._mem_bytes += row.size

    def _waiting(self) -> int:
        """The bytes counted against the bound: all but those handed to the link."""
        return self._mem_bytes + self._disk_bytes - sum(self.in_flight.values())

    def _make_room(self, size: int, kind: str) -> tuple[int, int]:
        dropped_events = dropped_results = 0
        while self._waiting() + size > self.max_bytes:
            victim = self._oldest("result") or (self._oldest("event") if kind == "event" else None)
            if victim is None:
                break  # a result may not push out an event: it is itself the oldest result
            self._forget(victim.id, victim.size)
            if victim.kind == "event":
                dropped_events += 1
            else:
                dropped_results += 1
        return dropped_events, dropped_results

    def _oldest(self, kind: str) -> Row | None:
        """The oldest row of a kind that may be dropped (not one handed to the link)."""
        candidates = self._scan(kind, skip=self.in_flight, limit=1)
        first = next((r for r in self._mem.values() if r.kind == kind and r.id not in self.in_flight), None)
        if first is not None:
            candidates.append(first)
        return min(candidates, key=lambda r: r.id) if candidates else None

    def _scan(self, kind: str | None, *, skip: Container[int], limit: int) -> list[Row]:
        """Up to `limit` rows from the file (of one kind, or all), oldest first, leaving out
        those gone and those in `skip`. A file that cannot be read gives none."""
        if self._db is None or limit <= 0:
            return []
        floor = self._floor.get(kind, 0)
        args: tuple[object, ...] = (floor,) if kind is None else (floor, kind)
        cur_sql = f"{_ROW_COLUMNS} WHERE id >= ?{'' if kind is None else ' AND kind = ?'} ORDER BY id"
        rows: list[Row] = []
        first_live: int | None = None
        last: int | None = None
        try:
            cur = self._db.execute(cur_sql, args)
            try:
                for r in cur:
                    last = r[0]
                    if last in self._gone:
                        continue
                    if first_live is None:
                        first_live = last
                    if last in skip or last in self._mem:
                        continue
                    rows.append(Row(*r))
                    if len(rows) >= limit:
                        break
            finally:
                cur.close()  # an open read would hold the WAL back from its checkpoint
        except sqlite3.Error as err:
            self._read_failed(err)
            return []
        if first_live is not None:
            self._floor[kind] = first_live
        elif last is not None:
            self._floor[kind] = last + 1
        return rows

    def _forget(self, row_id: int, size: int) -> None:
        """A row leaves the outbox (acknowledged, or dropped to make room)."""
        copy = self._mem.pop(row_id, None)
        if copy is not None:
            self._mem_bytes -= copy.size
            if row_id in self._unsure:  # it may have reached the file: delete it there too
                self._unsure.discard(row_id)
                self._gone.add(row_id)
            return
        if row_id in self._gone:
            return  # already forgotten
        if self._writable:
            try:
                with self._tx() as db:
                    deleted = db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
            except sqlite3.Error as err:
                self._write_failed(err)
                if self._on_disk(row_id) is not False:  # still there (or unknown): deleted later
                    self._gone.add(row_id)
            else:
                if deleted == 0:
                    return  # in neither place: nothing to give back
        elif self._on_disk(row_id) is False:
            return
        else:  # in the file (or a file that cannot be read now): deleted once it takes writes
            self._gone.add(row_id)
        self._disk_count -= 1
        self._disk_bytes -= size

    def pending(self, *, exclude: set[int], limit: int) -> list[Row]:
        """The oldest rows not yet handed to the broker link, in id order."""
        rows = self._scan(None, skip=exclude, limit=limit)
        taken = 0
        for r in self._mem.values():  # in id order: the first `limit` not excluded are enough
            if taken >= limit:
                break
            if r.id not in exclude:
                rows.append(r)
                taken += 1
        rows.sort(key=lambda r: r.id)
        return rows[:limit]

    def ack(self, row_id: int, size: int) -> None:
        """The broker has the message: forget it."""
        self._forget(row_id, size)

    def has_waiting(self) -> bool:
        """Cheap: whether rows wait to be handed to the link (no query)."""
        return self._waiting() > 0

    def depth(self) -> Depth:
        oldest = next(iter(self._mem.values())).created if self._mem else None
        first = self._scan(None, skip=(), limit=1)
        if first:
            oldest = first[0].created if oldest is None else min(oldest, first[0].created)
        age = None if oldest is None else round(max(0.0, self._clock() - oldest), 3)
        count = len(self._mem) + self._disk_count
        return Depth(count, max(self._mem_bytes + self._disk_bytes, 0), age, self._writable)

    def close(self) -> None:
        if self.path is not None and (not self._writable or self._mem or self._gone):
            self.retry_disk()  # the memory queue is saved if the disk takes it now
        self.save_seqs()
        if self._writable and not self._mem and not self._dirty_seqs:
            with contextlib.suppress(sqlite3.Error), self._tx() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        if self._mem and self.path is not None:
            log.error(
                "%d queued messages could not be written to %s (%s): lost at this stop",
                len(self._mem),
                self.path,
                self.storage_error,
            )
        self._close_db()
