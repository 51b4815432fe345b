"""The outbox's memory queue: the rows waiting while the disk cannot be written, in id order.

Bounded by the owner (`Outbox` counts `bytes` against `mqtt.outbox_max_mb`). `unsure` names the
rows whose write to the file reported failure while the file could not be asked whether it got
there: if one leaves the outbox before that is known, it is deleted from the file too.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from edge_agent.mqtt.outbox_file import Row


class MemoryQueue:
    def __init__(self) -> None:
        self._rows: dict[int, Row] = {}  # put order is id order
        self.bytes = 0
        self.unsure: set[int] = set()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._rows

    def __iter__(self) -> Iterator[Row]:
        """The rows, oldest first."""
        return iter(self._rows.values())

    def add(self, row: Row, *, unsure: bool = False) -> None:
        if unsure:
            self.unsure.add(row.id)
        self._rows[row.id] = row
        self.bytes += row.size

    def pop(self, row_id: int) -> Row | None:
        """Take a row out (None if it is not here); whether it was `unsure` stays recorded."""
        row = self._rows.pop(row_id, None)
        if row is not None:
            self.bytes -= row.size
        return row

    def oldest(self, kind: str, *, skip: Container[int]) -> Row | None:
        return next((r for r in self._rows.values() if r.kind == kind and r.id not in skip), None)

    def first(self, limit: int, *, skip: Container[int]) -> list[Row]:
        """The oldest `limit` rows not in `skip`."""
        rows: list[Row] = []
        for r in self._rows.values():
            if len(rows) >= limit:
                break
            if r.id not in skip:
                rows.append(r)
        return rows

    def oldest_created(self) -> float | None:
        return next(iter(self._rows.values())).created if self._rows else None
