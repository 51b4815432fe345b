"""One backoff value type, and the schedule every retry in the agent uses (a source that failed
to open, a model that failed to load, the Edge TPU, the state_dir's disk, a crashed worker)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of `first_s`, then multiplied by `factor` after each failure, at most `max_s`.
    A fixed interval is `Backoff(s, s)`."""

    first_s: float
    max_s: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s or self.factor < 1:
            raise ValueError(f"invalid backoff {self}")

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 → first_s)."""
        if failures <= 0:
            return 0.0
        return float(min(self.first_s * self.factor ** min(failures - 1, 64), self.max_s))

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        return cls(seconds, seconds, 1.0)


class RetrySchedule:
    """When the next attempt is due. Times are the caller's (`time.monotonic()`), so the
    schedule is tested with plain numbers."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0
        self.next_at = 0.0  # due at once

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> float:
        """One more failure in a row: the next attempt waits longer. Returns the wait."""
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        self.next_at = now + delay
        return delay

    def succeeded(self) -> None:
        """It works: the next failure starts from the first wait again."""
        self.failures = 0

    def now(self) -> None:
        """The next attempt is due at once (the file appeared, the config changed)."""
        self.next_at = 0.0
