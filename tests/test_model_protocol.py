"""Both ways a model runs (inline, and in a worker process) are one `InferenceModel`.

mypy proves it statically (`open_model` returns either as an `InferenceModel`); these tests check
it at runtime, on a real bundled model loaded both ways: every member of the protocol is there
with the protocol's signature, and the model answers through the protocol alone as the
interpreter itself does.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import INTERPRETER

from edge_agent.config import ModelConfig
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.model import InferenceModel
from edge_agent.runtime.worker import open_model

MODEL = "digits_uint8.tflite"


def _members(proto: type) -> dict[str, object]:
    """The protocol's own members: its properties and methods, as declared."""
    return {
        k: v
        for k, v in vars(proto).items()
        if not k.startswith("_") and (isinstance(v, property) or inspect.isfunction(v))
    }


# the process isolation starts a model worker: an e2e test (scripts/test --fast leaves it out)
@pytest.fixture(params=["inline", pytest.param("process", marks=pytest.mark.e2e)])
def model(request: pytest.FixtureRequest, bundled: Path) -> Iterator[InferenceModel]:
    cfg = ModelConfig.model_validate({"path": str(bundled / MODEL), "interpreter": INTERPRETER})
    m = open_model(cfg.model_copy(update={"isolation": request.param}))
    try:
        yield m
    finally:
        m.close()


def test_the_protocol_declares_what_the_agent_uses() -> None:
    members = _members(InferenceModel)
    assert set(members) == {
        *("name", "file", "backend", "delegate", "threads", "notes", "inputs", "outputs"),
        *("input_view", "read_input", "invoke", "fetch_outputs", "close"),
    }
    assert not isinstance(object(), InferenceModel)


def test_each_implementation_has_every_member_with_its_signature(model: InferenceModel) -> None:
    assert isinstance(model, InferenceModel)
    for name, declared in _members(InferenceModel).items():
        got = getattr(model, name)
        if isinstance(declared, property):
            assert not callable(got), f"{type(model).__name__}.{name} is a method, the protocol reads a value"
        else:
            assert callable(got), name
            want = inspect.signature(declared)
            have = inspect.signature(getattr(type(model), name))
            assert list(have.parameters) == list(want.parameters), f"{type(model).__name__}.{name}{have}"
            assert [p.default for p in have.parameters.values()] == [p.default for p in want.parameters.values()]


def test_through_the_protocol_alone_the_model_answers_as_its_interpreter(model: InferenceModel, bundled: Path) -> None:
    """The reference is an inline model's interpreter itself, fed the same frame."""
    reference = load_model(ModelConfig.model_validate({"path": str(bundled / MODEL), "interpreter": INTERPRETER}))
    assert (model.name, model.file.sha256, model.delegate) == (MODEL, reference.file.sha256, "cpu")
    assert (model.inputs, model.outputs, model.notes) == (reference.inputs, reference.outputs, ())
    assert model.threads >= 1 and model.backend.name == reference.backend.name
    info = model.inputs[0]
    frame = np.random.default_rng(17).integers(0, 256, size=info.shape, dtype=np.int64).astype(info.dtype)
    np.copyto(model.input_view(0)(), frame)
    reference.interpreter.set_tensor(info.index, frame)
    reference.interpreter.invoke()

    assert np.array_equal(model.read_input(0), frame)
    model.invoke()
    assert np.array_equal(model.read_input(0), frame)  # the invoke left the fed input as it was
    raws, outs = model.fetch_outputs()
    for o, raw, out in zip(model.outputs, raws, outs, strict=True):
        want = reference.interpreter.get_tensor(o.index)
        assert raw.dtype == want.dtype and raw.tobytes() == want.tobytes()
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, (want.astype(np.float32) - o.zero_point) * np.float32(o.scale))
