"""Label files in the common forms: one label per line, or "index label" pairs (Coral)."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.errors import ModelError

_PAIR = re.compile(r"^\s*(\d+)[\s:,]+(.*\S)\s*$")


def parse_labels(text: str) -> dict[int, str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    pairs = [_PAIR.match(ln) for ln in lines]
    # "index label" only when every line has that form: a plain list of labels may well
    # contain a line such as "3 way switch"
    if lines and all(pairs):
        return {int(m.group(1)): m.group(2) for m in pairs if m}
    return {i: ln.strip() for i, ln in enumerate(lines)}


def load_labels(path: str) -> dict[int, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"model.labels: file not found: {path}", reason="labels") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"model.labels: cannot read {path}: {err}", reason="labels") from None
    labels = parse_labels(text)
    if not labels:
        raise ModelError(f"model.labels: {path} holds no labels", reason="labels")
    return labels
