"""Label files in the common forms: one label per line, or "index label" pairs (Coral)."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.errors import ModelError

_PAIR = re.compile(r"^\s*(\d+)[\s:,]+(.*\S)\s*$")
# Windows editors write a byte order mark; it is not part of the first label
_BOM = "\ufeff"


def parse_labels(text: str) -> dict[int, str]:
    """Index → label. Blank lines are skipped in both forms; raises ValueError on a repeated index."""
    lines = [(n, ln) for n, ln in enumerate(text.removeprefix(_BOM).splitlines(), start=1) if ln.strip()]
    pairs = [(n, _PAIR.match(ln)) for n, ln in lines]
    # "index label" only when every line has that form: a plain list of labels may well
    # contain a line such as "3 way switch"
    if not lines or not all(m for _, m in pairs):
        return {i: ln.strip() for i, (_, ln) in enumerate(lines)}
    labels: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for n, m in pairs:
        assert m is not None
        index = int(m.group(1))
        if index in labels:
            # a silent overwrite would shift every score to the wrong name
            raise ValueError(f"index {index} appears twice (lines {first_line[index]} and {n})")
        labels[index], first_line[index] = m.group(2), n
    return labels


def load_labels(path: str) -> dict[int, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"model.labels: file not found: {path}", reason="labels") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"model.labels: cannot read {path}: {err}", reason="labels") from None
    try:
        labels = parse_labels(text)
    except ValueError as err:
        raise ModelError(f"model.labels: {path}: {err}", reason="labels") from None
    if not labels:
        raise ModelError(f"model.labels: {path} holds no labels", reason="labels")
    return labels
