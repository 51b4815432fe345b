"""The outbox: every event (and results, when configured) is stored before it is sent, and
removed only once the broker acknowledged it, so nothing is lost across broker outages,
agent crashes and power cuts.

Messages keep one id order whether they sit on disk (`OutboxFile`, SQLite) or, while the disk
cannot be written (a read-only or full SD card), in a bounded memory queue (`MemoryQueue`);
they go back to disk when it can be written. The store is bounded by bytes: results are
dropped oldest-first before any event; dropped events are counted so that the agent can say
how many (`outbox_overflow`). Sequence numbers are per topic, monotonic and persisted
(`SeqBook`).

A failing disk can make any statement fail (see outbox_file). The state stays true through
each of them because it is kept as facts, not guesses:
- every waiting row is in exactly one place, the file or the memory queue; after a write
  reported failure, the file is asked whether the row got there;
- the counts are kept per place (the file's and the queue's) and the file's are recounted
  whenever it is opened, so a reopen never forgets the memory queue (it used to: has_waiting()
  went False with rows waiting and sending stopped);
- rows acknowledged or dropped while the file takes no writes are remembered (its `gone`) and
  deleted when it does; rows on a file that can still be read keep being sent from it;
- `retry_disk` frees the WAL, deletes what is gone, then moves the memory queue to the file
  in one transaction: all of it, keeping ids (so order and seqs), or none.

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

from edge_agent.mqtt.link import encode
from edge_agent.mqtt.outbox_file import ROW_OVERHEAD, Opened, OutboxFile, Row, wal_pages_for
from edge_agent.mqtt.outbox_queue import MemoryQueue
from edge_agent.mqtt.outbox_seqs import SEQ_JUMP_AFTER_CRASH, SeqBook

__all__ = ["ROW_OVERHEAD", "SEQ_JUMP_AFTER_CRASH", "Depth", "Outbox", "Put", "Row"]

log = logging.getLogger(__name__)


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
        self.max_bytes = max_bytes
        self._clock = clock
        self._file = OutboxFile(path, wal_pages=wal_pages_for(max_bytes), clock=clock, factory=factory)
        self._mem = MemoryQueue()
        self._seqs = SeqBook()
        # rows handed to the broker link, not yet acknowledged (id → size, kept by the sender):
        # never dropped, since paho holds its own copy and delivers it after a reconnect anyway,
        # and not counted against the bound (at most the sender's window of them)
        self.in_flight: dict[int, int] = {}
        self._next_id = 1
        self._opened = False  # the file was read once: a reopen (after a storage error) is no crash recovery
        self._marked = False  # meta 'clean' = '0' written for this run
        if path is not None and self._connect():
            self._sync()

    @property
    def path(self) -> Path | None:
        return self._file.path

    @property
    def storage_error(self) -> str | None:
        """Why the outbox keeps new messages in memory now; None while it writes them to disk."""
        return self._file.error

    @property
    def recovered_unclean(self) -> bool:
        """The file said the previous run did not stop cleanly (seqs jump ahead: see SeqBook)."""
        return self._seqs.recovered_unclean

    # ---- the file -------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Open the file and take in its state; False when it cannot be opened or read."""
        opened = self._file.open(self._mem, read_clean=not self._opened)
        if opened is None:
            return False
        self._took_in(opened)
        return True

    def _took_in(self, opened: Opened) -> None:
        """A row also in the memory queue (its write reported a failure but got there) stays in
        the file only; the seqs never go back; the first open tells how the last run ended."""
        for row_id in opened.in_both:
            self._mem.pop(row_id)
        self._mem.unsure.clear()  # known now: in the file (its memory copy dropped above), or not
        self._next_id = max(self._next_id, opened.top_id + 1)
        self._seqs.merge(opened.seqs)
        if not self._opened:
            self._seqs.recovered_unclean = opened.clean is not None and opened.clean != "1"
            self._opened = True

    def retry_disk(self) -> bool:
        """Go back to disk when it can be written again; move the memory queue there."""
        if self.path is None:
            return False
        if self._file.db is None and not self._connect():
            return False
        return self._sync()

    def _sync(self) -> bool:
        """Write everything that waits for the disk; True when it is all there."""
        f = self._file
        was_failing = f.error is not None
        # room first: a WAL that filled the disk is copied into the file and cut back
        try:
            f.checkpoint()
        except sqlite3.Error as err:
            if f.count == 0 and not self._start_afresh(err):
                return False
        if was_failing and not f.has_room(self._mem.bytes):
            return False
        rows = list(self._mem)
        try:
            f.delete_gone()
            f.write(rows, list(self._seqs.numbers.items()), mark_running=not self._marked)
        except sqlite3.Error as err:
            f.write_failed(err)
            there = f.holds(rows[-1].id) if rows else False
            if there:  # reported failed, yet committed (one transaction)
                self._moved_to_disk(rows)
            elif there is None:
                self._mem.unsure.update(r.id for r in rows)
            return False
        self._moved_to_disk(rows)
        self._seqs.dirty.clear()
        self._marked = True
        f.error = None
        if was_failing:
            log.info("outbox back on disk at %s", self.path)
        return True

    def _start_afresh(self, err: sqlite3.Error) -> bool:
        """A WAL cannot be copied into its file when that must grow on a full disk, and until it
        is the WAL cannot be cut back: a disk filled by the outbox's own log stays full. Once the
        file holds no waiting message (all sent, or dropped), it is replaced by an empty one; the
        seqs are kept (in memory, written with the first transaction), so none is reused."""
        if not self._file.remove(err):
            return False
        self._marked = False
        return self._connect()

    def _moved_to_disk(self, rows: list[Row]) -> None:
        for r in rows:
            self._mem.pop(r.id)
            self._mem.unsure.discard(r.id)
        self._file.took(rows)

    # ---- sequence numbers ---------------------------------------------------------------
    def next_seq(self, topic: str) -> int:
        """A seq for a message that does not go through the outbox (saved by save_seqs)."""
        return self._seqs.next_seq(topic)

    def save_seqs(self) -> None:
        if not self._file.writable or not self._seqs.dirty:
            return
        try:
            self._file.save_seqs(self._seqs.unsaved())
        except sqlite3.Error as err:
            self._file.write_failed(err)
            return
        self._seqs.dirty.clear()

    # ---- queue --------------------------------------------------------------------------
    def put(
        self, topic: str, make_payload: Callable[[int], dict[str, object]], *, qos: int, kind: str, evict: bool = True
    ) -> Put:
        """Store one message; its payload is made with the topic's next seq.

        `evict=False` stores it without pushing anything out (the one notice that says how many
        events were dropped): the bound is exceeded by that row until the next put makes room.
        """
        seq = self._seqs.following(topic)
        payload = encode(make_payload(seq))
        row = Row(self._next_id, topic, payload, qos, kind, self._clock())
        dropped_events, dropped_results = self._make_room(row.size, kind) if evict else (0, 0)
        self._next_id += 1
        self._seqs.spend(topic, seq)
        if kind == "result" and evict and self._waiting() + row.size > self.max_bytes:
            # only events left, and a result may not push one out: this result is the one dropped
            # (its seq is spent, so the consumer sees the gap)
            self._seqs.dirty.add(topic)
            self.save_seqs()
            return Put(seq, dropped_events, dropped_results + 1)
        self._store(row)
        return Put(seq, dropped_events, dropped_results)

    def _store(self, row: Row) -> None:
        f = self._file
        unsure = False
        if f.writable:
            try:
                f.insert(row, self._seqs.numbers[row.topic])
            except sqlite3.Error as err:
                f.write_failed(err)
                there = f.holds(row.id)
                if there:  # reported failed, yet committed (with its seq)
                    f.added(row)
                    return
                unsure = there is None  # the file cannot be asked: the memory copy is kept, a reopen finds out
            else:
                f.added(row)
                return
        self._seqs.dirty.add(row.topic)
        self._mem.add(row, unsure=unsure)

    def _waiting(self) -> int:
        """The bytes counted against the bound: all but those handed to the link."""
        return self._mem.bytes + self._file.bytes - sum(self.in_flight.values())

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
        candidates = self._file.scan(kind, skip=self.in_flight, in_memory=self._mem, limit=1)
        first = self._mem.oldest(kind, skip=self.in_flight)
        if first is not None:
            candidates.append(first)
        return min(candidates, key=lambda r: r.id) if candidates else None

    def _forget(self, row_id: int, size: int) -> None:
        """A row leaves the outbox (acknowledged, or dropped to make room)."""
        if self._mem.pop(row_id) is None:
            self._file.forget(row_id, size)
        elif row_id in self._mem.unsure:  # it may have reached the file: delete it there too
            self._mem.unsure.discard(row_id)
            self._file.gone.add(row_id)

    def pending(self, *, exclude: set[int], limit: int) -> list[Row]:
        """The oldest rows not yet handed to the broker link, in id order."""
        rows = self._file.scan(None, skip=exclude, in_memory=self._mem, limit=limit)
        rows.extend(self._mem.first(limit, skip=exclude))  # in id order: the first `limit` are enough
        rows.sort(key=lambda r: r.id)
        return rows[:limit]

    def ack(self, row_id: int, size: int) -> None:
        """The broker has the message: forget it."""
        self._forget(row_id, size)

    def has_waiting(self) -> bool:
        """Cheap: whether rows wait to be handed to the link (no query)."""
        return self._waiting() > 0

    def depth(self) -> Depth:
        oldest = self._mem.oldest_created()
        first = self._file.scan(None, skip=(), in_memory=self._mem, limit=1)
        if first:
            oldest = first[0].created if oldest is None else min(oldest, first[0].created)
        age = None if oldest is None else round(max(0.0, self._clock() - oldest), 3)
        count = len(self._mem) + self._file.count
        return Depth(count, max(self._mem.bytes + self._file.bytes, 0), age, self._file.writable)

    def close(self) -> None:
        f = self._file
        if self.path is not None and (not f.writable or len(self._mem) or f.gone):
            self.retry_disk()  # the memory queue is saved if the disk takes it now
        self.save_seqs()
        if f.writable and not len(self._mem) and not self._seqs.dirty:
            with contextlib.suppress(sqlite3.Error):
                f.mark_clean()
        if len(self._mem) and self.path is not None:
            log.error(
                "%d queued messages could not be written to %s (%s): lost at this stop",
                len(self._mem),
                self.path,
                f.error,
            )
        f.close()
