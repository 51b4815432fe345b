"""Typed results serialize to exactly the payloads the dict-returning decoders published.

payloads.json was recorded from those decoders on real model outputs (tests/payload_cases.py);
here the same frames go through today's pipeline and each result's `to_payload()` must encode,
through the link's own encoder, to the very same bytes. Also: the publisher puts those bytes in
the result message, and each result type's payload keeps its keys in the published order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from payload_cases import GOLDEN, Case, cases

from edge_agent.config import parse_config
from edge_agent.mqtt.link import encode
from edge_agent.pipeline import Inference, Pipeline
from edge_agent.postprocess.results import (
    Box,
    Classification,
    Detections,
    Keypoint,
    Person,
    Pose,
    Scored,
    Segmentation,
    Share,
    Values,
)

RECORDED: dict[str, list[str]] = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_real_outputs_serialize_to_the_recorded_payloads(case: Case) -> None:
    if not case.needs.exists():
        pytest.skip(f"{case.needs} is not on this machine")
    p = Pipeline.load(parse_config(case.config))
    try:
        got = []
        for frame in case.frames():
            outcome = p.process(frame)
            assert isinstance(outcome, Inference), outcome
            got.append(encode(outcome.result.to_payload()).decode())
    finally:
        p.close()
    assert got == RECORDED[case.name]


def test_every_recorded_case_is_still_a_case() -> None:
    assert sorted(RECORDED) == sorted(c.name for c in cases())


KP = Keypoint("nose", 1.5, 2.25, 0.5, True)


@pytest.mark.parametrize(
    ("result", "payload"),
    [
        (
            Classification((Scored(3, "three", 0.9), Scored(1, "one", 0.05))),
            {"top": [{"index": 3, "label": "three", "score": 0.9}, {"index": 1, "label": "one", "score": 0.05}]},
        ),
        (Classification(()), {"top": []}),
        (
            Detections((Box("cat", 7, 0.8, (1.0, 2.0, 30.5, 40.25)),)),
            {"objects": [{"label": "cat", "index": 7, "score": 0.8, "box": [1.0, 2.0, 30.5, 40.25]}]},
        ),
        (
            Pose((KP,), 0.5),  # single pose: no "poses" key
            {"keypoints": [{"name": "nose", "x": 1.5, "y": 2.25, "score": 0.5, "visible": True}], "pose_score": 0.5},
        ),
        (
            Pose((), 0.1, ()),  # multi pose, none above the threshold
            {"keypoints": [], "pose_score": 0.1, "poses": []},
        ),
        (
            Pose((KP,), 0.7, (Person(0.7, (0.0, 1.0, 2.0, 3.0), (KP,)),)),
            {
                "keypoints": [KP.to_payload()],
                "pose_score": 0.7,
                "poses": [{"score": 0.7, "box": [0.0, 1.0, 2.0, 3.0], "keypoints": [KP.to_payload()]}],
            },
        ),
        (
            Segmentation((Share(0, "background", 0.75), Share(2, "dog", 0.25))),
            {
                "classes": [
                    {"index": 0, "label": "background", "fraction": 0.75},
                    {"index": 2, "label": "dog", "fraction": 0.25},
                ]
            },
        ),
        (Values((("t", 21.5),)), {"values": {"t": 21.5}}),
        (
            Values((("t", 21.5), ("rh", 40.0)), (("t", "°C"),)),
            {"values": {"t": 21.5, "rh": 40.0}, "units": {"t": "°C"}},
        ),
        (Values((("a", 1.0), ("a", 2.0))), {"values": {"a": 2.0}}),  # a name given twice: its last value
    ],
)
def test_each_result_type_serializes_with_its_keys_in_order(result: Any, payload: dict[str, Any]) -> None:
    got = result.to_payload()
    assert got == payload
    assert encode(got) == encode(payload)  # the same keys in the same order: the same bytes


def test_results_are_frozen() -> None:
    r = Classification((Scored(1, "one", 0.5),))
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        r.top = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.top[0].score = 1.0  # type: ignore[misc]
    assert hash(r) == hash(Classification((Scored(1, "one", 0.5),)))
