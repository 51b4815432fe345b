"""Logging: to the systemd journal, with structured fields, when systemd started us; to stderr otherwise.

The journal's native protocol is one datagram of KEY=VALUE lines to its socket (a value with
a newline is sent as KEY, newline, its length as 64-bit little endian, the bytes, newline), so
no systemd-python is needed. systemd sets $JOURNAL_STREAM when our stderr goes to the journal;
that is the sign to speak to it natively (fields: PRIORITY, SYSLOG_IDENTIFIER, LOGGER,
CODE_FILE/LINE/FUNC, and EVENT_KIND where a log line reports an event).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "edge-agent") -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = [
                _field("MESSAGE", self.format(record)),
                _field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
                _field("SYSLOG_IDENTIFIER", self.identifier),
                _field("LOGGER", record.name),
                _field("CODE_FILE", record.pathname),
                _field("CODE_LINE", str(record.lineno)),
                _field("CODE_FUNC", record.funcName),
            ]
            kind = getattr(record, "event_kind", None)
            if kind:
                fields.append(_field("EVENT_KIND", str(kind)))
            self.sock.sendto(b"".join(fields), self.path)
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def setup_logging(level: str = "info", *, env: dict[str, str] | None = None) -> logging.Handler:
    """Install one handler on the root logger: the journal under systemd, stderr otherwise."""
    env = dict(os.environ) if env is None else env
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    socket_path = env.get("EDGE_AGENT_JOURNAL_SOCKET", JOURNAL_SOCKET)  # the override is for tests
    if env.get("JOURNAL_STREAM") and os.path.exists(socket_path):  # noqa: PTH110
        handler = JournalHandler(socket_path)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler
