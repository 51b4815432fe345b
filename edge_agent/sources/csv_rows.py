"""`csv`: sensor rows from a CSV file with a header; an empty cell is a missing value.

A row that cannot be used (wrong number of cells, a cell that is not a finite number, a blank
line, a line the csv module rejects) is a `SourceProblem` naming `file:line`; the next row
follows. Rows come as fast as the agent takes them; `source.fps` limits the rate.
"""

from __future__ import annotations

import csv
import math
import os
import select
import stat
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from edge_agent.bounded import MAX_QUOTE_CHARS, describe_kind, quote_part
from edge_agent.config.source import CsvOptions
from edge_agent.errors import SourceError
from edge_agent.sources.base import Frame, SourceProblem, Stamp

_MISSING = {"", "na", "nan", "null", "none"}
# the longest line read: a row of 10,000 features of 100 characters each. A longer line (a
# 10 MB header, a file that is not CSV) is that line's problem, quoted only in part
MAX_LINE_CHARS = 1 << 20
_SKIP_CHARS = 1 << 16  # the rest of a too-long line is read and dropped this much at a time


def _wait_for_writer(fd: int) -> None:
    """Make the read end of a FIFO blocking, and wait until its writer has been there: until then
    a read is "end of file" (Linux's poll reports neither data nor a hang-up on a FIFO no writer
    has opened yet). Opening the FIFO again, blocking, would wait forever for a writer that wrote
    everything and left between the two opens, its rows held by the first."""
    os.set_blocking(fd, True)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()  # data, or the writer came and went (POLLHUP, always reported)


class _LineTooLong(Exception):  # noqa: N818 - internal: raised through csv.reader, caught in this module
    def __init__(self, line: int, head: str, length: int) -> None:
        self.line, self.head, self.length = line, head, length
        super().__init__(f"line {line} is {length} characters")

    def describe(self) -> str:
        return f"line of {self.length} characters, more than the {MAX_LINE_CHARS} allowed: {quote_part(self.head)}…"


class _BoundedLines:
    """The file's lines for csv.reader, each at most MAX_LINE_CHARS: a longer one is read to its
    end in small pieces and dropped, and raises `_LineTooLong` (csv.reader passes it on and starts
    its next row afresh). `line_num` counts physical lines, the dropped ones too."""

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh
        self.line_num = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self._fh.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        self.line_num += 1
        if len(line) <= MAX_LINE_CHARS or line.endswith(("\n", "\r")):
            return line
        head, length = line[:MAX_QUOTE_CHARS], len(line)
        while line and not line.endswith(("\n", "\r")):
            line = self._fh.readline(_SKIP_CHARS)
            length += len(line)
        raise _LineTooLong(self.line_num, head, length)


def _cell_value(cell: str) -> float | str:
    """A cell as a number (NaN when missing), or why it is not one."""
    if cell.lower() in _MISSING:
        return math.nan
    try:
        v = float(cell)
    except ValueError:
        return f"{cell[:30]!r} is not a number"
    return v if math.isfinite(v) else f"{cell[:30]!r} is not a finite number"


class CsvRowSource:
    def __init__(self, opts: CsvOptions, *, feature_names: tuple[str, ...] = ()) -> None:
        self._path = Path(opts.path).expanduser()
        self.name = f"csv:{self._path.name}"
        self._delimiter = opts.delimiter
        self._loop = opts.loop
        self._stamp = Stamp()
        self._wanted = opts.columns or feature_names
        self._open()

    def _open(self) -> None:
        try:
            # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column
            # name; errors="replace": a bad byte spoils its own cell (a SourceProblem naming the
            # row), not the whole 8 KiB decoder chunk of rows around it
            # O_NONBLOCK: a device named as the CSV must not block the open; it is then refused for
            # what it is (a FIFO is a sensor feed: opened again below, blocking)
            fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise SourceError(f"source.path: cannot open {self._path}: {err.strerror or err}") from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            # a sensor feed through a named pipe: read blocking, so that reads wait for the writer
            _wait_for_writer(fd)
        elif not stat.S_ISREG(mode):
            os.close(fd)
            raise SourceError(f"source.path: {self._path} is {describe_kind(mode)}, not a regular file")
        self._fh = open(fd, newline="", encoding="utf-8-sig", errors="replace")  # noqa: PTH123, SIM115 - a descriptor, closed in close()
        self._lines = _BoundedLines(self._fh)
        self._reader = csv.reader(self._lines, delimiter=self._delimiter)
        try:
            header = [h.strip() for h in next(self._reader)]
        except StopIteration:
            self._fh.close()
            raise SourceError(f"source.path: {self._path} is empty (a header row is needed)") from None
        except (csv.Error, UnicodeDecodeError, _LineTooLong) as err:
            self._fh.close()
            why = err.describe() if isinstance(err, _LineTooLong) else quote_part(str(err))
            raise SourceError(f"source.path: {self._path} header is not valid CSV: {why}") from None
        if self._wanted:
            missing = [c for c in self._wanted if c not in header]
            if missing:
                self._fh.close()
                raise SourceError(
                    f"source.path: {self._path.name} has no column(s) {quote_part(', '.join(missing))} "
                    f"(header: {quote_part(', '.join(header))})"
                )
            self._columns = [header.index(c) for c in self._wanted]
            self._names = tuple(self._wanted)
        else:
            self._columns = list(range(len(header)))
            self._names = tuple(header)
        self._width = len(header)
        self._rows_since_open = 0
        self._values = np.empty(len(self._columns), dtype=np.float64)

    def _where(self, first: int) -> str:
        """`file:line`, or `file:first-last` for a row whose quoted cell spans lines (or a quote
        never closed, which swallows the lines after it)."""
        last = self._lines.line_num
        return f"{self._path.name}:{first}" if last <= first else f"{self._path.name}:{first}-{last}"

    def read(self) -> Frame | SourceProblem | None:
        first = self._lines.line_num + 1
        row = self._next_row(first)
        # a file with no rows after its header has nothing to loop over
        if row is None and self._loop and self._rows_since_open > 0:
            self._fh.close()
            self._open()
            return self.read()
        if not isinstance(row, list):
            return row
        self._rows_since_open += 1
        where = self._where(first)
        values = self._row_values(row)
        if isinstance(values, str):
            return SourceProblem(where, values)
        seq, ts, mono = self._stamp.next()
        return Frame(seq=seq, ts=ts, mono=mono, source=where, values=values, names=self._names)

    def _next_row(self, first: int) -> list[str] | SourceProblem | None:
        """The next row's cells, the problem of a line that is not one, or None at the end."""
        try:
            return next(self._reader, None)
        except _LineTooLong as err:
            return SourceProblem(self._where(first), err.describe())
        except (csv.Error, UnicodeDecodeError) as err:
            return SourceProblem(self._where(first), f"unreadable CSV row: {quote_part(str(err))}")

    def _row_values(self, row: list[str]) -> npt.NDArray[np.float64] | str:
        """The wanted cells as float64 (NaN where missing), or why the row cannot be used."""
        if not any(cell.strip() for cell in row):
            return "empty row"
        if len(row) != self._width:
            return f"row has {len(row)} cells, the header has {self._width}"
        values = np.empty(len(self._columns), dtype=np.float64)
        for i, col in enumerate(self._columns):
            v = _cell_value(row[col].strip())
            if isinstance(v, str):
                return f"column {quote_part(repr(self._names[i]))}: {v}"
            values[i] = v
        return values

    def release(self, frame: Frame) -> None:
        """Nothing to give back: each row is a fresh small vector."""

    def close(self) -> None:
        self._fh.close()
