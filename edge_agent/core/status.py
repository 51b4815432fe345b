"""The device's status, computed in one place from the parts' states.

`online`: a model is loaded, a source is open (or a finite one has finished), and the guard has
not degraded the device after consecutive faults. Anything else is `degraded`. Pausing does not
change the state (SPEC fixes it): the status carries `paused` beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("edge_agent.agent")


def compute_state(*, model_loaded: bool, source_open: bool, faulty: bool) -> str:
    return "online" if model_loaded and source_open and not faulty else "degraded"


class Status:
    def __init__(self, publish: Callable[[str], None]) -> None:
        self.state = "degraded"  # until a model and a source are up
        self.since = time.time()
        self._publish = publish

    def update(self, state: str) -> bool:
        """Publish the state when it changed; returns whether it did."""
        if state == self.state:
            return False
        log.info("status: %s → %s", self.state, state)
        self.state = state
        self.since = time.time()
        self._publish(state)
        return True
