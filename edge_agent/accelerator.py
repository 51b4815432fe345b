"""When to give up on the Edge TPU, and when to try it again.

A Coral that fails mid-run (a USB transfer error aborts libedgetpu, a stick that hangs until it
is replugged) fails on every frame after it. `AcceleratorWatch` counts consecutive accelerator
failures; at `lose_after` the agent switches to the CPU model (`delegate_lost`). While on the
CPU, a retry of the Edge TPU is due every `retry_s`; a retry that fails waits another period.
"""

from __future__ import annotations


class AcceleratorWatch:
    def __init__(self, *, lose_after: int, retry_s: float) -> None:
        self.lose_after = lose_after
        self.retry_s = retry_s
        self.failures = 0  # consecutive, on the accelerator
        self.next_retry = 0.0

    def failure(self) -> bool:
        """One more failed inference on the accelerator: True when it is time to leave it."""
        self.failures += 1
        return self.failures >= self.lose_after

    def success(self) -> None:
        self.failures = 0

    def on_cpu(self, now: float) -> None:
        """Running on the CPU (switched, or the delegate was unavailable at start, or a retry failed)."""
        self.failures = 0
        self.next_retry = now + self.retry_s

    def retry_due(self, now: float) -> bool:
        return now >= self.next_retry
