"""The SPEC topic names for one device."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    def _t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.device}/{leaf}"

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def results(self) -> str:
        return self._t("results")

    @property
    def events(self) -> str:
        return self._t("events")

    @property
    def stats(self) -> str:
        return self._t("stats")

    @property
    def config_state(self) -> str:
        return self._t("config/state")

    @property
    def config_result(self) -> str:
        return self._t("config/result")

    @property
    def cmd_result(self) -> str:
        return self._t("cmd/result")

    def leaf(self, name: str) -> str:
        """P/D/<name>, for a leaf named at run time (e.g. the answer `busy_answer` chose)."""
        return self._t(name)

    def config_set(self) -> str:
        return self._t("config/set")

    def group_config_set(self, group: str) -> str:
        return f"{self.prefix}/group/{group}/config/set"
