"""The outbox's sequence numbers: per topic, monotonic, and which ones are not saved yet.

A topic whose seq is not written with each message (live results) is saved periodically;
after an unclean stop those topics jump ahead by SEQ_JUMP_AFTER_CRASH, so a consumer sees a
gap, never a reused number. Saving is the owner's (`Outbox`): this part keeps the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

SEQ_JUMP_AFTER_CRASH = 100_000


class SeqBook:
    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}
        self.dirty: set[str] = set()  # topics whose number is newer than the file's
        self.recovered_unclean = False  # the file said the last run did not stop cleanly
        self._jumped: set[str] = set()

    def following(self, topic: str) -> int:
        """The number a message stored in the outbox gets (spent with `spend`)."""
        return self.numbers.get(topic, 0) + 1

    def spend(self, topic: str, seq: int) -> None:
        self.numbers[topic] = seq

    def next_seq(self, topic: str) -> int:
        """A seq for a message that does not go through the outbox (saved later: dirty)."""
        n = self.numbers.get(topic, 0)
        if self.recovered_unclean and topic not in self._jumped:
            # the last numbers handed out before the crash may never have been saved
            self._jumped.add(topic)
            if n:
                n += SEQ_JUMP_AFTER_CRASH
        n += 1
        self.numbers[topic] = n
        self.dirty.add(topic)
        return n

    def merge(self, saved: Iterable[tuple[str, int]]) -> None:
        """Numbers read from the file; those handed out while it was away are kept: never go back."""
        for topic, seq in saved:
            self.numbers[topic] = max(seq, self.numbers.get(topic, 0))

    def unsaved(self) -> list[tuple[str, int]]:
        return [(t, self.numbers[t]) for t in self.dirty]
