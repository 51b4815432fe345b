"""The short exception hierarchy. Every user-facing error carries a one-line message."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """An invalid configuration file or update; `problems` holds one line per key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ModelError(EdgeAgentError):
    """A model file that cannot be loaded or run. `reason` is a short machine tag."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class DelegateError(ModelError):
    """The Edge TPU delegate could not be loaded or used."""


class SourceError(EdgeAgentError):
    """A frame source cannot be opened or read."""


class SourceStalledError(SourceError):
    """A source that is open but has delivered no frame for too long (a frozen camera, a dead stream)."""


class PreprocessError(EdgeAgentError):
    """A frame or row that does not fit the model's input."""
