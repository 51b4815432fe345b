#!/usr/bin/env python3
"""Functions and classes in edge_agent/ longer than a maintainer can hold at once.

Lists every function over --max-function lines and every class over --max-class lines (from
the `def`/`class` line to the last line of its body, decorators not counted) and exits 1 when
one is over without a waiver. A waiver is a comment on the def/class line saying why:

    def parse(data: bytes) -> Info:  # size: one flat table of the format's fields, in file order

Waived ones are listed too (so they stay visible), but do not fail the check.
Usage: scripts/sizes.py [--max-function 60] [--max-class 400] [--exclude PATH ...] [ROOT ...]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

WAIVER = re.compile(r"#\s*size:\s*(?P<why>\S.*)$")


@dataclass(frozen=True)
class Oversize:
    kind: str  # "function" | "class"
    path: Path
    line: int
    name: str
    length: int
    waiver: str | None


def oversized(path: Path, *, max_function: int, max_class: int) -> list[Oversize]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found: list[Oversize] = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            kind, limit = "function", max_function
        elif isinstance(node, ast.ClassDef):
            kind, limit = "class", max_class
        else:
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1
        if length > limit:
            match = WAIVER.search(lines[node.lineno - 1])
            found.append(Oversize(kind, path, node.lineno, node.name, length, match["why"] if match else None))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["edge_agent"], metavar="ROOT", help="folders (default edge_agent)")
    parser.add_argument("--max-function", type=int, default=60, metavar="N", help="lines per function (default 60)")
    parser.add_argument("--max-class", type=int, default=400, metavar="N", help="lines per class (default 400)")
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="PATH", help="a file left out of the check (repeatable)"
    )
    args = parser.parse_args(argv)
    excluded = {Path(p).resolve() for p in args.exclude}
    failed = False
    for root in args.roots:
        for path in sorted(Path(root).rglob("*.py")):
            if path.resolve() in excluded:
                continue
            for o in oversized(path, max_function=args.max_function, max_class=args.max_class):
                where = f"{o.path}:{o.line} {o.kind} {o.name}: {o.length} lines"
                if o.waiver is None:
                    failed = True
                    limit = args.max_function if o.kind == "function" else args.max_class
                    print(f"{where} (over {limit})")
                else:
                    print(f"{where} (waived: {o.waiver})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
