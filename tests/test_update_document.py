"""The update document (SPEC "Remote updates"): canonical JSON, HMAC-SHA256, and `parse_update`,
which must refuse anything malformed with UpdateRejectedError and nothing else (it is fed
whatever arrives on a config topic)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_agent.remote.document import MAX_DEPTH, MAX_VERSION, UpdateRejectedError, canonical, parse_update, sign

KEY = b"fleet-update-key-0123456789abcdef"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- strategies -------------------------------------------------------------------------
# every text, lone surrogates included (json.loads makes them from "\ud800")
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**53, 2**53 + 1, 2**63, -(2**63)]),
    st.builds(lambda: 10**5000),  # no JSON text (Python's int-to-text limit); built, as its repr fails
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]),
    any_text,
)
hostile_json = st.recursive(
    hostile_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=25,
)
sig_like = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=62, max_size=66),
    any_text,
    hostile_scalars,
)

# what a correct document may hold: finite numbers, integers with a JSON text, no surrogates
plain_text = st.text(max_size=12)
valid_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    plain_text,
)
valid_json = st.recursive(
    valid_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(plain_text, children, max_size=4),
    max_leaves=20,
)
valid_config = st.dictionaries(plain_text, valid_json, max_size=5)
versions = st.integers(min_value=1, max_value=MAX_VERSION)


def signed(config: dict[str, Any], version: int, key: bytes = KEY) -> dict[str, Any]:
    return {"version": version, "config": config, "sig": sign(key, config, version)}


def rejected(payload: Any, key: bytes = KEY) -> UpdateRejectedError:
    with pytest.raises(UpdateRejectedError) as info:
        parse_update(payload, key)
    return info.value


def parse_or_reject(payload: Any) -> None:
    """Parsing may succeed or refuse; anything else escaping is the bug."""
    try:
        parse_update(payload, KEY)
    except UpdateRejectedError as err:
        assert err.key and err.message, err


# ---- fuzz: nothing but UpdateRejectedError ------------------------------------------------
@FUZZ
@given(hostile_json)
def test_any_json_like_value_is_parsed_or_rejected(payload: Any) -> None:
    parse_or_reject(payload)


@FUZZ
@given(
    version=hostile_json,
    config=hostile_json,
    sig=sig_like,
    drop=st.sets(st.sampled_from(["version", "config", "sig"]), max_size=3),
    # keys of other types than text too: never from JSON, but nothing may depend on that
    extra=st.dictionaries(st.one_of(any_text, st.integers(), st.none()), hostile_scalars, max_size=2),
)
def test_the_three_fields_of_any_type_are_parsed_or_rejected(
    version: Any, config: Any, sig: Any, drop: set[str], extra: dict[Any, Any]
) -> None:
    payload = {"version": version, "config": config, "sig": sig, **extra}
    for field in drop:
        payload.pop(field, None)
    parse_or_reject(payload)


@FUZZ
@given(config=hostile_json, version=st.one_of(versions, hostile_scalars))
def test_a_well_signed_hostile_config_is_parsed_or_rejected(config: Any, version: Any) -> None:
    """The signature holds, so the checks after it (finite numbers, canonical form) are reached."""
    try:
        sig = sign(KEY, config, version)
    except (TypeError, ValueError):
        sig = "0" * 64
    parse_or_reject({"version": version, "config": config, "sig": sig})


@FUZZ
@given(config=valid_config, version=versions, upper=st.booleans())
def test_a_correctly_signed_document_always_parses_to_itself(config: dict[str, Any], version: int, upper: bool) -> None:
    assume(1 + 1 + _depth(config) <= MAX_DEPTH)
    doc = signed(config, version)
    if upper:
        doc["sig"] = doc["sig"].upper()
    # as it arrives: JSON text over MQTT
    payload = json.loads(json.dumps(doc, ensure_ascii=False))
    parsed = parse_update(payload, KEY)
    assert parsed.version == version
    assert canonical(parsed.config, parsed.version) == canonical(config, version)


@FUZZ
@given(
    config=valid_config,
    version=versions,
    field=st.sampled_from(["version", "config", "sig"]),
    new=st.one_of(hostile_json, versions, st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
)
def test_a_signed_document_with_one_field_changed_is_rejected(
    config: dict[str, Any], version: int, field: str, new: Any
) -> None:
    assume(2 + _depth(config) <= MAX_DEPTH)
    doc = signed(config, version)
    old = doc[field]
    if field == "sig":
        assume(not (isinstance(new, str) and new.lower() == old))
    else:
        c, v = (new, version) if field == "config" else (config, new)
        try:
            same = canonical(c, v) == canonical(config, version) and type(new) is type(old)
        except (TypeError, ValueError):
            same = False
        assume(not same)
    doc[field] = new
    rejected(doc)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=MAX_DEPTH - 3, max_value=3 * MAX_DEPTH), st.sampled_from(["list", "dict"]))
def test_deep_nesting_is_rejected_past_the_limit(levels: int, kind: str) -> None:
    inner: Any = 1
    for _ in range(levels):
        inner = [inner] if kind == "list" else {"a": inner}
    doc = signed({"x": inner}, 1)
    if 2 + levels <= MAX_DEPTH:  # document, config, then the levels
        assert parse_update(doc, KEY).config == {"x": inner}
    else:
        assert rejected(doc).key == "document"


def test_very_deep_nesting_is_rejected_without_recursion() -> None:
    inner: Any = []
    for _ in range(200_000):  # far past Python's recursion limit
        inner = [inner]
    err = rejected({"version": 1, "config": {"x": inner}, "sig": "0" * 64})
    assert err.key == "document" and "nested" in err.message


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# ---- the canonical form -----------------------------------------------------------------
GOLDEN_CONFIG = {"source": {"path": "/srv/images/é"}, "postprocess": {"top_k": 1, "threshold": 0.25}}
GOLDEN_BYTES = '{"config":{"postprocess":{"threshold":0.25,"top_k":1},"source":{"path":"/srv/images/é"}},"version":7}'
# what `openssl dgst -sha256 -hmac KEY` gives for GOLDEN_BYTES: other tools must be able to sign
GOLDEN_SIG = "faa24178d6c7034c002847a783d5b450b6b8d083e1d231402e523cd6f700c62d"


def test_canonical_form_is_the_documented_one() -> None:
    assert canonical(GOLDEN_CONFIG, 7) == GOLDEN_BYTES.encode("utf-8")
    assert sign(KEY, GOLDEN_CONFIG, 7) == GOLDEN_SIG
    assert hmac.new(KEY, GOLDEN_BYTES.encode("utf-8"), hashlib.sha256).hexdigest() == GOLDEN_SIG
    assert parse_update({"version": 7, "config": GOLDEN_CONFIG, "sig": GOLDEN_SIG}, KEY).version == 7


@FUZZ
@given(valid_config, versions, st.randoms(use_true_random=False))
def test_canonical_form_does_not_depend_on_key_order(config: dict[str, Any], version: int, rnd: Any) -> None:
    def shuffled(v: Any) -> Any:
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: shuffled(x) for k, x in items}
        if isinstance(v, list):
            return [shuffled(x) for x in v]  # list order is meaning: kept
        return v

    assert canonical(shuffled(config), version) == canonical(config, version)
    assert sign(KEY, shuffled(config), version) == sign(KEY, config, version)


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ({"b": 1, "a": {"d": 2, "c": 3}}, '{"a":{"c":3,"d":2},"b":1}'),
        ({"label": "café ☕ 日本"}, '{"label":"café ☕ 日本"}'),  # as itself, not \\u escapes
        ({"q": 'quote " and \\ and \n'}, '{"q":"quote \\" and \\\\ and \\n"}'),
        ({"f": 0.1, "g": 1.0, "h": -0.0, "i": 1e100, "j": 5e-324, "k": 1.5e-07}, None),
        ({"n": None, "t": True, "l": [3, 1, 2]}, '{"l":[3,1,2],"n":null,"t":true}'),
        ({"big": 2**64}, '{"big":18446744073709551616}'),
    ],
)
def test_canonical_form_of_values(config: dict[str, Any], text: str | None) -> None:
    got = canonical(config, 1).decode("utf-8")
    if text is not None:
        assert got == '{"config":' + text + ',"version":1}'
    else:  # floats: Python's shortest round-trip repr
        assert got == '{"config":{"f":0.1,"g":1.0,"h":-0.0,"i":1e+100,"j":5e-324,"k":1.5e-07},"version":1}'
    # a float and an integer of the same value are different documents
    assert canonical({"x": 1.0}, 1) != canonical({"x": 1}, 1)


# ---- signatures ---------------------------------------------------------------------------
def test_a_document_signed_with_another_key_is_rejected() -> None:
    doc = signed({"postprocess": {"top_k": 1}}, 3, key=b"another-key-of-the-right-length")
    err = rejected(doc)
    assert err.key == "sig" and "does not match" in err.message
    assert parse_update(doc, b"another-key-of-the-right-length").version == 3


def test_the_signature_covers_the_version() -> None:
    doc = signed({"postprocess": {"top_k": 1}}, 3)
    doc["version"] = 4
    assert rejected(doc).key == "sig"


@pytest.mark.parametrize(
    ("mutate", "accepted"),
    [
        (lambda s: s.upper(), True),
        (lambda s: s[:1].upper() + s[1:], True),
        (lambda s: s[:-1], False),  # 63 characters
        (lambda s: s + "0", False),  # 65
        (lambda s: "g" + s[1:], False),  # not hexadecimal
        (lambda s: " " + s[1:], False),
        (lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"), False),  # hexadecimal, one digit off
        (lambda s: "", False),
        (lambda s: int(s, 16), False),  # a number, not text
        (lambda s: None, False),
    ],
)
def test_sig_format(mutate: Any, accepted: bool) -> None:
    doc = signed({"postprocess": {"top_k": 2}}, 5)
    doc["sig"] = mutate(doc["sig"])
    if accepted:
        assert parse_update(doc, KEY).version == 5
    else:
        assert rejected(doc).key == "sig"


# ---- versions -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", [True, False, 0, -1, -(2**53), MAX_VERSION + 1, 2**64, 1.0, "1", None, [1]])
def test_versions_out_of_bounds_or_not_integers_are_rejected(version: Any) -> None:
    config = {"postprocess": {"top_k": 1}}
    try:
        sig = sign(KEY, config, version)
    except (TypeError, ValueError):
        sig = "0" * 64
    err = rejected({"version": version, "config": config, "sig": sig})
    assert err.key == "version", err


@pytest.mark.parametrize("version", [1, 2, MAX_VERSION])
def test_versions_in_bounds_are_accepted(version: int) -> None:
    assert parse_update(signed({}, version), KEY).version == version


# ---- the document's shape -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ([], "document"),
        ("text", "document"),
        (None, "document"),
        ({"version": 1, "config": {}}, "sig"),
        ({"config": {}, "sig": "0" * 64}, "version"),
        ({"version": 1, "sig": "0" * 64}, "config"),
        ({"version": 1, "config": {}, "sig": "0" * 64, "extra": 1}, "document"),
        ({"version": 1, "config": [], "sig": "0" * 64}, "config"),
        ({"version": 1, "config": "x", "sig": "0" * 64}, "config"),
    ],
)
def test_malformed_documents_name_the_field(payload: Any, key: str) -> None:
    assert rejected(payload).key == key


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected_even_when_signed(bad: float) -> None:
    config = {"postprocess": {"threshold": bad}}
    doc = {"version": 1, "config": config, "sig": sign(KEY, config, 1)}
    assert rejected(doc).key == "config"


def test_a_config_without_a_json_text_is_rejected() -> None:
    huge = {"x": 10**5000}  # past Python's int-to-text limit
    assert rejected({"version": 1, "config": huge, "sig": "0" * 64}).key == "config"
    lone = {"x": "\ud800"}  # a lone surrogate has no UTF-8 form
    assert rejected({"version": 1, "config": lone, "sig": "0" * 64}).key == "config"
