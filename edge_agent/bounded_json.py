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
from collections.abc import Callable
from typing import Any

from edge_agent.bounded import quote_part

MAX_NUMBER_CHARS = 40  # digits of an integer, characters of a float: beyond 128 bits, far beyond any real use
# a float written out in full (the exact decimal of a double has up to ~770 digits): for readers
# that take every number as a float and say themselves what is out of range
MAX_FLOAT_TEXT_CHARS = 1000
MAX_DEPTH = 32  # nesting of objects and arrays (a command or an update is 3-5 levels deep)


class JsonLimitError(ValueError):
    """Not JSON, or JSON outside the limits; str() is one line saying which, phrased to follow a
    subject: "message " + str(err) reads "message is not valid JSON: ..."."""


def _int_parser(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = len(text.lstrip("-"))
        if digits > limit:
            raise JsonLimitError(
                f"holds an integer of {digits} digits ({quote_part(text, 24)}): at most {limit} are accepted"
            )
        return int(text)

    return parse


def _float_parser(limit: int, *, finite: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if len(text) > limit:
            raise JsonLimitError(
                f"holds a number of {len(text)} characters ({quote_part(text, 24)}): at most {limit} are accepted"
            )
        value = float(text)
        if finite and not math.isfinite(value):  # 1e999 parses as inf
            raise JsonLimitError(f"holds the number {quote_part(text, 24)}, out of a double's range")
        return value

    return parse


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


def loads_bounded(
    text: str | bytes, *, max_depth: int = MAX_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS, finite: bool = False
) -> Any:
    """`json.loads` with bounded numbers and nesting; JsonLimitError (one line) for anything else.

    `max_number_chars`: the longest integer (in digits) or float (in characters) taken; a reader
    that turns numbers into floats may allow up to MAX_FLOAT_TEXT_CHARS and judge the value
    itself. `finite`: refuse NaN, Infinity and numbers beyond a double's range here; otherwise
    they come back as floats and the reader says what it thinks of them (an update names the key)."""
    try:
        value = json.loads(
            text,
            parse_int=_int_parser(max_number_chars),
            parse_float=_float_parser(max_number_chars, finite=finite),
            parse_constant=_constant if finite else float,  # float("NaN"): json's own default
        )
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
