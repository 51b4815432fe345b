"""The outbox's SQLite file: the connection, what waits in it and what is gone from it.

SQLite in WAL mode with synchronous=FULL: a committed row survives a power cut. A failing
disk (ENOSPC, EIO, a read-only remount) can make any statement fail: an insert, a delete, a
seq or meta write, a COMMIT (which may even have written), the checkpoint, the open. This part
keeps facts, not guesses, about the file through each of them:
- `count`/`bytes`: the rows waiting in the file (not counting those in `gone`), recounted
  whenever it is opened; while it cannot be opened they are the last known figures (the rows
  still wait there, to be sent once it can);
- `gone`: rows acknowledged or dropped while the file took no writes, deleted when it does;
- `holds()` asks the file whether a write that reported failure got there anyway;
- `error`: why the file takes no writes now (None while it does); reads may still work, and
  the rows on a file that can be read keep being sent from it.

Which rows wait in memory, and the order across both places, are `Outbox`'s business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROW_OVERHEAD = 64  # bytes counted per row beyond its topic and payload (SQLite's own bookkeeping)
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
class Opened:
    """What a file just opened holds beyond its rows' counts (which the file keeps itself)."""

    in_both: tuple[int, ...]  # rows also in the memory queue: their write reported failure, yet got there
    top_id: int  # the highest row id in the file, 0 when empty
    seqs: tuple[tuple[str, int], ...]
    clean: str | None  # meta 'clean' when asked for (the first open), else None


def wal_pages_for(max_bytes: int) -> int:
    return max(WAL_PAGES_MIN, min(WAL_PAGES_MAX, max_bytes // PAGE_SIZE))


class OutboxFile:
    """The file of an outbox, or none (`path` None: no state_dir, everything waits in memory)."""

    def __init__(
        self,
        path: Path | None,
        *,
        wal_pages: int,
        clock: Callable[[], float],
        factory: type[sqlite3.Connection],
    ) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.error: str | None = None if path is not None else "no state_dir: the outbox is kept in memory"
        self.count = 0
        self.bytes = 0
        self.gone: set[int] = set()
        self._wal_pages = wal_pages
        self._clock = clock
        self._factory = factory
        # per scan (None: all rows, or one kind): every row in the file below it is in `gone`, so
        # a long run of them is stepped over once, not at every pump
        self._floor: dict[str | None, int] = {}

    @property
    def writable(self) -> bool:
        return self.db is not None and self.error is None

    # ---- open, fail, close ----------------------------------------------------------------
    def open(self, in_memory: Container[int], *, read_clean: bool) -> Opened | None:
        """Open the file and count what waits in it; None when it cannot be opened or read.
        A row also `in_memory` is counted here: the owner drops its memory copy."""
        assert self.path is not None
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one thread at a time (the agent's loop), though not always the one that built it
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0, check_same_thread=False, factory=self._factory
            )
            try:
                self._prepare(db)
            except sqlite3.DatabaseError as err:
                db.close()
                db = None
                if "not a database" in str(err) or "malformed" in str(err):
                    # keep the evidence, start a fresh store: a corrupt file must not stop the agent
                    aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
                    self.path.rename(aside)
                    log.error("outbox %s is corrupt (%s): moved to %s, starting empty", self.path, err, aside.name)
                    return self.open(in_memory, read_clean=read_clean)
                raise
            self.db = db
            return self._load(db, in_memory, read_clean=read_clean)
        except (sqlite3.Error, OSError) as err:
            self.close()
            if db is not None:  # opened, then failed (a full or read-only disk): no leaked handle
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self.failed(f"cannot open the outbox {self.path}: {err}")
            return None

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # a bounded page cache (SQLite's default is 2 MB): the outbox is written and read
        # in order, so a small cache costs nothing, and RSS does not jump at the first outage
        db.execute("PRAGMA cache_size=-256")
        db.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={self._wal_pages * PAGE_SIZE}")
        db.executescript(_SCHEMA)

    def _load(self, db: sqlite3.Connection, in_memory: Container[int], *, read_clean: bool) -> Opened:
        """Count what waits in the file; what is gone stays gone."""
        count = size = top = 0
        gone: set[int] = set()
        both: list[int] = []
        for row_id, topic_len, payload_len in db.execute("SELECT id, length(topic), length(payload) FROM outbox"):
            top = max(top, row_id)
            if row_id in self.gone:
                gone.add(row_id)
                continue
            if row_id in in_memory:
                both.append(row_id)
            count += 1
            size += payload_len + topic_len + ROW_OVERHEAD
        seqs = db.execute("SELECT topic, seq FROM seqs").fetchall()
        clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone() if read_clean else None
        # all read: only now is the state replaced (a read failing halfway changes nothing)
        self.count, self.bytes, self.gone = count, size, gone
        self._floor.clear()
        return Opened(tuple(both), top, tuple(seqs), None if clean is None else clean[0])

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
        self.db = None

    def failed(self, message: str) -> None:
        if self.error is None:
            log.error("%s: keeping queued messages in memory until the disk can be written", message)
        self.error = message

    def write_failed(self, err: sqlite3.Error) -> None:
        """A write failed: the file keeps being read (and its rows sent), writes go to memory."""
        self.failed(f"outbox write failed: {err}")

    def read_failed(self, err: sqlite3.Error) -> None:
        """The file cannot even be read: closed; its rows wait there until it is reopened."""
        self.failed(f"outbox read failed: {err}")
        self.close()

    def holds(self, row_id: int) -> bool | None:
        """Whether the file holds a row (after a write that reported failure); None: unknown."""
        if self.db is None:
            return None
        try:
            return self.db.execute("SELECT 1 FROM outbox WHERE id = ?", (row_id,)).fetchone() is not None
        except sqlite3.Error as err:
            self.read_failed(err)
            return None

    # ---- room on the disk -----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Copy the WAL into the file and cut it back (room first, on a disk the WAL filled)."""
        assert self.db is not None
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def has_room(self, memory_bytes: int) -> bool:
        """Whether the disk can take what waits in memory (in the WAL, then the file) and a WAL's
        worth of messages after it. A checkpoint frees a little room on a disk still full: going
        back on disk for a few messages would only fail again (storage_error, storage_recovered,
        storage_error every retry)."""
        assert self.path is not None
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return True  # cannot tell: the writes will
        needed = 2 * memory_bytes + self._wal_pages * PAGE_SIZE
        if fs.f_bavail * fs.f_frsize >= needed:
            return True
        self.failed(
            f"outbox write failed: {fs.f_bavail * fs.f_frsize} bytes free in {self.path.parent}, {needed} needed"
        )
        return False

    def remove(self, err: sqlite3.Error) -> bool:
        """Delete the file, which holds nothing waiting, because its WAL could not be
        checkpointed (`err`); False when it cannot be removed. The owner opens a new one."""
        assert self.path is not None
        self.close()
        try:
            for suffix in ("-wal", "-shm", ""):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        except OSError as unlink_err:
            self.failed(f"outbox write failed: {err}; cannot remove {self.path}: {unlink_err}")
            return False
        log.warning(
            "outbox %s: its log could not be checkpointed (%s) and it held nothing waiting: started afresh",
            self.path,
            err,
        )
        self.gone.clear()
        return True

    # ---- writes (each raises sqlite3.Error; the caller decides what that means) ---------
    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
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
                self.close()
            raise

    def delete_gone(self) -> None:
        if self.gone:
            with self.tx() as tx:
                tx.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in sorted(self.gone)])
            self.gone.clear()  # their bytes were given back when they went

    def write(self, rows: list[Row], seqs: list[tuple[str, int]], *, mark_running: bool) -> None:
        """Rows (keeping their ids) and seqs in one transaction; meta 'clean' = '0' if asked."""
        with self.tx() as tx:
            tx.executemany(
                "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                [(r.id, r.topic, r.payload, r.qos, r.kind, r.created) for r in rows],
            )
            tx.executemany("INSERT OR REPLACE INTO seqs VALUES (?, ?)", seqs)
            if mark_running:
                tx.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")

    def insert(self, row: Row, seq: int) -> None:
        """One row and its topic's seq, in one transaction."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, row.topic, row.payload, row.qos, row.kind, row.created),
            )
            db.execute("INSERT OR REPLACE INTO seqs VALUES (?, ?)", (row.topic, seq))

    def save_seqs(self, seqs: list[tuple[str, int]]) -> None:
        with self.tx() as db:
            db.executemany("INSERT OR REPLACE INTO seqs VALUES (?, ?)", seqs)

    def mark_clean(self) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")

    # ---- the rows ---------------------------------------------------------------------------
    def added(self, row: Row) -> None:
        """A new row written to the file: counted (its id is the highest: above every floor)."""
        self.count += 1
        self.bytes += row.size

    def took(self, rows: list[Row]) -> None:
        """Rows moved from memory to the file: counted."""
        for r in rows:
            self.count += 1
            self.bytes += r.size
        if rows:
            self._floor.clear()  # they may lie below a scan's floor

    def forget(self, row_id: int, size: int) -> None:
        """A row of the file leaves the outbox: deleted now, or once the file takes writes."""
        if row_id in self.gone:
            return  # already forgotten
        if self.writable:
            try:
                with self.tx() as db:
                    deleted = db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
            except sqlite3.Error as err:
                self.write_failed(err)
                if self.holds(row_id) is not False:  # still there (or unknown): deleted later
                    self.gone.add(row_id)
            else:
                if deleted == 0:
                    return  # in neither place: nothing to give back
        elif self.holds(row_id) is False:
            return
        else:  # in the file (or a file that cannot be read now): deleted once it takes writes
            self.gone.add(row_id)
        self.count -= 1
        self.bytes -= size

    def scan(self, kind: str | None, *, skip: Container[int], in_memory: Container[int], limit: int) -> list[Row]:
        """Up to `limit` rows from the file (of one kind, or all), oldest first, leaving out
        those gone, those in `skip`, and those whose copy waits `in_memory`. A file that
        cannot be read gives none."""
        if self.db is None or limit <= 0:
            return []
        floor = self._floor.get(kind, 0)
        args: tuple[object, ...] = (floor,) if kind is None else (floor, kind)
        cur_sql = f"{_ROW_COLUMNS} WHERE id >= ?{'' if kind is None else ' AND kind = ?'} ORDER BY id"
        rows: list[Row] = []
        first_live: int | None = None
        last: int | None = None
        try:
            cur = self.db.execute(cur_sql, args)
            try:
                for r in cur:
                    last = r[0]
                    if last in self.gone:
                        continue
                    if first_live is None:
                        first_live = last
                    if last in skip or last in in_memory:
                        continue
                    rows.append(Row(*r))
                    if len(rows) >= limit:
                        break
            finally:
                cur.close()  # an open read would hold the WAL back from its checkpoint
        except sqlite3.Error as err:
            self.read_failed(err)
            return []
        if first_live is not None:
            self._floor[kind] = first_live
        elif last is not None:
            self._floor[kind] = last + 1
        return rows
