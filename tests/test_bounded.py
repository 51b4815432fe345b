"""Bounded reads: regular files only, limits per kind, long input quoted in part."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.bounded import FileReadError, quote_part, read_bytes_bounded, read_text_bounded


def test_a_regular_file_within_its_limit_is_read(tmp_path: Path) -> None:
    p = tmp_path / "labels.txt"
    p.write_text("cat\ndog\n")
    assert read_text_bounded(p, what="labels file", max_bytes=100) == "cat\ndog\n"


def test_a_file_over_its_limit_is_refused_naming_the_size(tmp_path: Path) -> None:
    p = tmp_path / "big"
    p.write_bytes(b"x" * 101)
    with pytest.raises(FileReadError, match="is 101 bytes, more than the 100 allowed"):
        read_bytes_bounded(p, what="labels file", max_bytes=100)


def test_dev_zero_is_refused_without_reading_it() -> None:
    with pytest.raises(FileReadError, match="labels file /dev/zero is a character device"):
        read_bytes_bounded("/dev/zero", what="labels file", max_bytes=100)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "cfg.toml"
    os.mkfifo(fifo)
    with pytest.raises(FileReadError, match="is a FIFO"):
        read_bytes_bounded(fifo, what="config file", max_bytes=100)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match="is a directory"):
        read_bytes_bounded(tmp_path, what="model file", max_bytes=100)


def test_text_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    p = tmp_path / "l.txt"
    p.write_bytes(b"ok\n\xff")
    with pytest.raises(FileReadError, match=r"not utf-8 text \(byte 3\)"):
        read_text_bounded(p, what="labels file", max_bytes=100)


def test_long_input_is_quoted_in_part_on_one_line() -> None:
    q = quote_part("a,b\n" * 10_000, limit=50)
    assert "\n" not in q and len(q) < 100 and "49950 more characters" in q
    assert quote_part("short") == "short"
    qb = quote_part(b"\xff" * 10_000, limit=20)
    assert "10000 bytes in all" in qb and len(qb) < 80
