"""JSON from the network or a file, parsed within limits: numbers, nesting, constants.

`json.loads` alone lets a sender choose what the parser does: a 5,000-digit integer raises a
ValueError that is not a JSONDecodeError (Python's int-parsing limit), thousands of nested
brackets exhaust the parser's stack, `NaN` and `Infinity` come back as floats that not every
reader expects. `loads_bounded` turns each into a `JsonLimitError` whose message is one
line, quoting the offending part only in part.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_agent.bounded import quote_part

MAX_NUMBER_CHARS = 40  # digits of an integer, characters of a float: beyond 128 bits, far beyond any real use
MAX_DEPTH = 32  # nesting of objects and arrays (a command or an update is 3-5 levels deep)


class JsonLimitError(ValueError):
    """Not JSON, or JSON outside the limits; str() is one line saying which, phrased to follow a
    subject: "message " + str(err) reads "message is not valid JSON: ..."."""


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_CHARS:
        raise JsonLimitError(
            f"holds an integer of {digits} digits ({quote_part(text, 24)}): at most {MAX_NUMBER_CHARS} are accepted"
        )
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonLimitError(
            f"holds a number of {len(text)} characters ({quote_part(text, 24)}): at most {MAX_NUMBER_CHARS} are accepted"
        )
    return float(text)


def _finite_float(text: str) -> float:
    value = _float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise JsonLimitError(f"holds the number {text}, out of a double's range")
    return value


def _constant(name: str) -> Any:
    raise JsonLimitError(f"holds {name}, not a finite number")


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether `value` nests objects/arrays deeper than `max_depth` (iterative: no stack of its own)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads_bounded(text: str | bytes, *, max_depth: int = MAX_DEPTH, finite: bool = False) -> Any:
    """`json.loads` with bounded numbers and nesting; JsonLimitError (one line) for anything else.

    `finite`: refuse NaN, Infinity and numbers beyond a double's range here; otherwise they come
    back as floats and the reader says what it thinks of them (an update names the key)."""
    try:
        if finite:
            value = json.loads(text, parse_int=_int, parse_float=_finite_float, parse_constant=_constant)
        else:
            value = json.loads(text, parse_int=_int, parse_float=_float)
    except JsonLimitError:
        raise
    except json.JSONDecodeError as err:
        raise JsonLimitError(f"is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # thousands of nested brackets: the parser's stack gave up first
        raise JsonLimitError(f"is nested too deeply (more than {max_depth} levels)") from None
    except ValueError as err:  # anything else the parser raises on hostile input, in one line
        raise JsonLimitError(f"is not valid JSON: {quote_part(str(err))}") from None
    if depth_exceeds(value, max_depth):
        raise JsonLimitError(f"is nested too deeply (more than {max_depth} levels)")
    return value
