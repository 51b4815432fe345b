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
import re
from typing import Any

import numpy as np

from edge_agent.bounded import quote_part

MAX_NUMBER_CHARS = 40  # digits in a row in a number: beyond 128 bits or a double's 17 digits, far beyond real use
# a double written out in full (its exact decimal has up to ~770 digits): for readers
# that take every number as a float and say themselves what is out of range
MAX_FLOAT_TEXT_CHARS = 1000
MAX_DEPTH = 32  # nesting of objects and arrays (a command or an update is 3-5 levels deep)


class JsonLimitError(ValueError):
    """Not JSON, or JSON outside the limits; str() is one line saying which, phrased to follow a
    subject: "message " + str(err) reads "message is not valid JSON: ..."."""


# a JSON string, escapes included (the unrolled form: no backtracking); what is outside all of
# them is numbers, literals, brackets and punctuation
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DIGIT_MASK = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise JsonLimitError(f"holds the number {quote_part(text, 24)}, out of a double's range")
    return value


def _constant(name: str) -> Any:
    raise JsonLimitError(f"holds {name}, not a finite number")


def _long_number(outside: bytes, limit: int) -> str | None:
    """Why a number in the text (strings blanked out) is too long, or None."""
    digits = outside.translate(_DIGIT_MASK)  # digits → "0", the rest → " ": a plain substring search
    at = digits.find(b"0" * (limit + 1))
    if at < 0:
        return None
    end = digits.find(b" ", at)
    run = outside[at : end if end >= 0 else len(outside)].decode("ascii")
    return f"holds a number of {len(run)} digits ({quote_part(run, 24)}): at most {limit} are accepted"


def _depth(outside: bytes) -> int:
    """How deep the brackets (of a valid document, strings blanked out) nest: the running sum of
    +1 per opening and -1 per closing bracket, at its highest."""
    brackets = outside.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps, dtype=np.int32).max())


def _outside_strings(text: str) -> bytes:
    # outside its strings valid JSON is ASCII; of anything else, each character stays one byte
    return _STRING.sub('""', text).encode("ascii", "replace")


def loads_bounded(
    text: str | bytes, *, max_depth: int = MAX_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS, finite: bool = False
) -> Any:
    """`json.loads` with bounded numbers and nesting; JsonLimitError (one line) for anything else.

    `max_number_chars`: the longest run of digits in a number (an integer, a mantissa, a
    fraction); a reader that turns every number into a float may allow up to
    MAX_FLOAT_TEXT_CHARS and judge the value itself. `finite`: refuse NaN, Infinity and numbers
    beyond a double's range here; otherwise they come back as floats and the reader says what it
    thinks of them (an update names the key).

    The document is parsed by json's C scanner as it is (per-number Python hooks would cost ten
    times the parse on a message of small numbers), then its text, strings blanked out, is
    checked for long numbers and nesting, both in C (bytes.translate/find, numpy)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JsonLimitError(f"is not UTF-8 text (byte {err.start})") from None
    try:
        # None: json's own C conversions (NaN and Infinity taken as floats)
        value = json.loads(
            text, parse_float=_finite_float if finite else None, parse_constant=_constant if finite else None
        )
    except JsonLimitError:
        raise
    except json.JSONDecodeError as err:
        raise JsonLimitError(f"is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # thousands of nested brackets: the parser's stack gave up first
        raise JsonLimitError(f"is nested too deeply (more than {max_depth} levels)") from None
    except ValueError as err:  # Python's int-parsing limit (4,300 digits), or another refusal of the parser
        why = _long_number(_outside_strings(text), max_number_chars)
        raise JsonLimitError(why or f"is not valid JSON: {quote_part(str(err))}") from None
    outside = _outside_strings(text)  # valid JSON now: the string pattern is exact
    why = _long_number(outside, max_number_chars)
    if why is not None:
        raise JsonLimitError(why)
    if _depth(outside) > max_depth:
        raise JsonLimitError(f"is nested too deeply (more than {max_depth} levels)")
    return value
