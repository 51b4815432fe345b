"""Label files in the common forms: one label per line, or "index label" pairs (Coral)."""

from __future__ import annotations

import re

from edge_agent.bounded import MAX_LABELS_BYTES, FileReadError, read_bytes_bounded
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
    """The labels of the file at `path`, read with a bound: `/dev/zero`, a FIFO or a directory is
    said to be what it is rather than read until memory runs out or forever."""
    try:
        data = read_bytes_bounded(path, what="labels file", max_bytes=MAX_LABELS_BYTES)
    except FileNotFoundError:
        raise ModelError(f"model.labels: file not found: {path}", reason="labels") from None
    except FileReadError as err:  # not a regular file, or too big: the message says which
        raise ModelError(f"model.labels: {err}", reason="labels") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise ModelError(
            f"model.labels: cannot read {path}: {getattr(err, 'strerror', None) or err}", reason="labels"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelError(
            f"model.labels: cannot read {path}: not UTF-8 text (byte {err.start})", reason="labels"
        ) from None
    try:
        labels = parse_labels(text)
    except ValueError as err:
        raise ModelError(f"model.labels: {path}: {err}", reason="labels") from None
    if not labels:
        raise ModelError(f"model.labels: {path} holds no labels", reason="labels")
    return labels


def labels_mismatch(labels: dict[int, str], classes: int) -> str | None:
    """What does not fit, in words, when `labels` name the classes of an output scoring `classes`
    classes; None when they fit. A plain list shorter than the classes leaves the last classes
    published by number ("3".."9" for 3 names and 10 classes); labels past the last class are
    never used (often a list for another model, or one with an extra background line). An
    "index label" file may leave gaps on purpose (COCO's ids): only indices past the end count."""
    if not labels or classes <= 0:
        return None
    top = max(labels)
    if top >= classes:
        unused = sum(1 for i in labels if i >= classes)
        return (
            f"{len(labels)} labels (indices up to {top}), but the model scores {classes} classes: "
            f"{unused} label(s) past index {classes - 1} are never used; is the labels file for this model?"
        )
    if len(labels) == top + 1 and len(labels) < classes:  # a dense list, shorter than the classes
        n = len(labels)
        rest = f"class {n} is" if n == classes - 1 else f"classes {n}-{classes - 1} are"
        return (
            f"{n} labels, but the model scores {classes} classes: {rest} published by number; "
            "is the labels file for this model?"
        )
    return None
