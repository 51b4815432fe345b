"""Building something slow (a model in a fresh interpreter) off the agent's loop.

Loading a model can take seconds, and an accelerator that is in trouble can hang inside its
delegate's initialisation. The loop must go on serving frames, the broker and the watchdog
meanwhile, so the build runs in a thread and the loop polls `done()` between two frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BackgroundBuild(Generic[T]):
    def __init__(self, build: Callable[[], T], *, name: str, tag: object = None) -> None:
        self.tag = tag  # what the build was made for (a config), to notice it went stale
        self._build = build
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._build()
        except BaseException as err:  # noqa: BLE001 - handed to the loop, which decides
            self._error = err
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def result(self) -> T:
        """The built value, or the exception the build raised; only once done()."""
        if not self._done.is_set():
            raise RuntimeError("the build is still running")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
