"""What consecutive faulty frames lead to: degraded status, then an action; and recovery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from edge_agent.config import GuardConfig

Step = Literal["degrade", "act", "recover"] | None


class Escalation:
    """Counts consecutive faulty and good frames.

    `fault()` answers "degrade" at the degrade_after-th consecutive fault and "act" at every
    act_after-th; `good()` answers "recover" at the recover_after-th good frame after a
    degradation. A single good frame ends a fault streak.
    """

    def __init__(self, *, degrade_after: int, act_after: int, recover_after: int) -> None:
        self.degrade_after = degrade_after
        self.act_after = act_after
        self.recover_after = recover_after
        self.faults = 0
        self.goods = 0
        self.degraded = False

    @classmethod
    def for_guard(cls, g: GuardConfig) -> Escalation:
        return cls(degrade_after=g.degrade_after, act_after=g.act_after, recover_after=g.recover_after)

    def fault(self) -> Step:
        self.faults += 1
        self.goods = 0
        if self.faults % self.act_after == 0:
            self.degraded = True
            return "act"
        if self.faults == self.degrade_after and not self.degraded:
            self.degraded = True
            return "degrade"
        return None

    def good(self) -> Step:
        self.faults = 0
        self.goods += 1
        if self.degraded and self.goods >= self.recover_after:
            self.degraded = False
            self.goods = 0
            return "recover"
        return None
