"""Tests for edge_agent.runtime.tflite_file (pure-Python .tflite reader)."""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
from pathlib import Path
from typing import Any

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.runtime.tflite_file import (
    AssociatedFile,
    TfliteFileError,
    labels_from_metadata,
    parse_model_bytes,
    read_model_file,
)

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
CORAL = TESTDATA / "coral"
MOBILENET_V2 = "mobilenet_v2_1.0_224_quant.tflite"
EDGETPU = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
INVOKING_ERROR = "model_invoking_error.tflite"
MOVENET = "movenet_single_pose_lightning_ptq.tflite"
ALL_MODELS = (MOBILENET_V2, EDGETPU, INVOKING_ERROR, MOVENET)
needs_testdata = pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"{TESTDATA} not present")
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep .hypothesis/ out of the repo
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def _coral(name: str) -> bytes:
    path = CORAL / name
    if not path.is_file():
        pytest.skip(f"test data not available: {path}")
    return path.read_bytes()


def _assert_error(data: bytes, match: str | None = None) -> str:
    with pytest.raises(TfliteFileError, match=match) as excinfo:
        parse_model_bytes(data)
    message = str(excinfo.value)
    assert message
    assert "\n" not in message
    assert isinstance(excinfo.value, ValueError)
    return message


def _parse_or_error(data: bytes) -> None:
    """The fuzz oracle: success, or TfliteFileError with a one-line message."""
    try:
        info = parse_model_bytes(data)
    except TfliteFileError as exc:
        assert str(exc)
        assert "\n" not in str(exc)
    else:
        labels_from_metadata(info)


# --- a synthetic model built with the flatbuffers Builder (no test data needed) ---
# Builder slots are field indices in schema.fbs / metadata_schema.fbs order.


def _obj(b: Any, *fields: tuple[int, str, Any]) -> int:
    b.StartObject(max((f[0] for f in fields), default=-1) + 1)
    for index, kind, value in fields:
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(index, value, 0)
        else:
            getattr(b, f"Prepend{kind}Slot")(index, value, 0)
    return int(b.EndObject())


def _vec(b: Any, kind: str, items: list[Any]) -> int:
    b.StartVector(4, len(items), 4)
    for item in reversed(items):
        if kind == "off":
            b.PrependUOffsetTRelative(item)
        else:
            getattr(b, f"Prepend{kind}")(item)
    return int(b.EndVector())


def _metadata_flatbuffer(labels_name: str) -> bytes:
    b = flatbuffers.Builder(0)
    image = _obj(b, (0, "Int8", 2))  # ImageProperties.color_space = GRAYSCALE
    value_range = _obj(b, (0, "Int32", 0), (1, "Int32", 255))
    content = _obj(b, (0, "Uint8", 2), (1, "off", image), (2, "off", value_range))
    norm = _obj(b, (0, "off", _vec(b, "Float32", [0.0])), (1, "off", _vec(b, "Float32", [255.0])))
    unit = _obj(b, (0, "Uint8", 1), (1, "off", norm))
    stats = _obj(b, (0, "off", _vec(b, "Float32", [1.0])), (1, "off", _vec(b, "Float32", [-1.0])))
    tensor_in = _obj(
        b,
        (0, "off", b.CreateString("digits")),
        (3, "off", content),
        (4, "off", _vec(b, "off", [unit])),
        (5, "off", stats),
    )
    labels = _obj(b, (0, "off", b.CreateString(labels_name)), (2, "Int8", 2))
    tensor_out = _obj(b, (0, "off", b.CreateString("scores")), (6, "off", _vec(b, "off", [labels])))
    subgraph = _obj(b, (2, "off", _vec(b, "off", [tensor_in])), (3, "off", _vec(b, "off", [tensor_out])))
    root = _obj(
        b,
        (0, "off", b.CreateString("Synthetic")),
        (3, "off", _vec(b, "off", [subgraph])),
        (4, "off", b.CreateString("edge-agent tests")),
        (7, "off", b.CreateString("1.0.0")),
    )
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def _synthetic_model(*, external: bool = False, metadata_buffer: int = 1) -> bytes:
    """Model with a >=127 builtin op, an Edge TPU custom op, metadata and labels.

    With external=True the metadata lives after the flatbuffer at a file
    offset (the >2 GB layout) instead of inline in Buffer.data.
    """
    meta = _metadata_flatbuffer("labels.txt")
    external_offset = 4096
    b = flatbuffers.Builder(0)
    big_op = _obj(b, (0, "Int8", 127), (3, "Int32", 150), (2, "Int32", 2))
    tpu_op = _obj(b, (0, "Int8", 32), (1, "off", b.CreateString("edgetpu-custom-op")))
    tensor = _obj(b, (0, "off", _vec(b, "Int32", [1, 4])), (3, "off", b.CreateString("t")))
    operator = _obj(b, (0, "Uint32", 1), (1, "off", _vec(b, "Int32", [0])), (2, "off", _vec(b, "Int32", [0])))
    subgraph = _obj(b, (0, "off", _vec(b, "off", [tensor])), (3, "off", _vec(b, "off", [operator])))
    if external:
        meta_buf = _obj(b, (1, "Uint64", external_offset), (2, "Uint64", len(meta)))
    else:
        meta_buf = _obj(b, (0, "off", b.CreateByteVector(meta)))
    runtime_buf = _obj(b, (0, "off", b.CreateByteVector(b"2.3.0\0\0\0")))
    entries = [
        _obj(b, (0, "off", b.CreateString("TFLITE_METADATA")), (1, "Uint32", metadata_buffer)),
        _obj(b, (0, "off", b.CreateString("min_runtime_version")), (1, "Uint32", 2)),
    ]
    root = _obj(
        b,
        (0, "Uint32", 3),
        (1, "off", _vec(b, "off", [big_op, tpu_op])),
        (2, "off", _vec(b, "off", [subgraph])),
        (3, "off", b.CreateString("synthetic")),
        (4, "off", _vec(b, "off", [_obj(b), meta_buf, runtime_buf])),
        (6, "off", _vec(b, "off", entries)),
    )
    b.Finish(root, file_identifier=b"TFL3")
    model = bytes(b.Output())
    if external:
        assert len(model) <= external_offset
        model = model.ljust(external_offset, b"\0") + meta
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labels.txt", "zero\none\n\n")
    return model + archive.getvalue()


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-buffer"])
def test_synthetic_model(external: bool) -> None:
    info = parse_model_bytes(_synthetic_model(external=external))
    assert info.version == 3
    assert info.description == "synthetic"
    big, tpu = info.operators
    assert (big.builtin_code, big.builtin_name, big.custom_code, big.version) == (
        150,
        None,
        None,
        2,
    )
    assert (tpu.builtin_code, tpu.builtin_name) == (32, "CUSTOM")
    assert tpu.custom_code == "edgetpu-custom-op"
    assert info.custom_ops == ("edgetpu-custom-op",)
    assert info.edgetpu_compiled
    assert info.min_runtime_version == "2.3.0"
    meta = info.metadata
    assert meta is not None
    assert (meta.name, meta.author) == ("Synthetic", "edge-agent tests")
    assert meta.min_parser_version == "1.0.0"
    (inp,), (out,) = meta.inputs, meta.outputs
    assert inp.name == "digits"
    assert inp.color_space == "GRAYSCALE"
    assert inp.value_range == (0, 255)
    assert (inp.normalization_mean, inp.normalization_std) == ((0.0,), (255.0,))
    assert (inp.stats_min, inp.stats_max) == ((-1.0,), (1.0,))
    assert out.color_space is None
    assert out.associated_files == (AssociatedFile("labels.txt", None, "TENSOR_AXIS_LABELS"),)
    assert info.associated_files == {"labels.txt": b"zero\none\n\n"}
    assert labels_from_metadata(info) == ["zero", "one"]


def test_metadata_buffer_index_out_of_range() -> None:
    message = _assert_error(_synthetic_model(metadata_buffer=7))
    assert "refers to buffer 7" in message


def test_corrupt_metadata_is_an_error() -> None:
    data = bytearray(_synthetic_model(external=True))
    data[4096 + 4 : 4096 + 8] = b"XXXX"  # the nested flatbuffer's identifier
    _assert_error(bytes(data), match=r"TFLITE_METADATA.*b'XXXX', expected b'M001'")


# --- the Coral test models ---


@needs_testdata
def test_mobilenet_v2_metadata(tmp_path: Path) -> None:
    info = read_model_file(CORAL / MOBILENET_V2)
    assert info.version == 3
    assert info.description == "MLIR Converted."
    assert [op.builtin_name for op in info.operators] == [
        "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX",
    ]  # fmt: skip
    assert info.custom_ops == ()
    assert not info.edgetpu_compiled
    assert info.min_runtime_version == "1.5.0"
    meta = info.metadata
    assert meta is not None
    assert meta.name == "ImageClassifier"
    assert meta.description == ("Identify the most prominent object in the image from a known set of categories.")
    assert (meta.version, meta.author, meta.license) == (None, None, None)
    assert meta.min_parser_version == "1.0.0"
    assert meta.associated_files == ()
    (inp,) = meta.inputs
    assert (inp.name, inp.description) == ("image", "Input image to be classified.")
    assert (inp.normalization_mean, inp.normalization_std) == ((127.5,), (127.5,))
    assert inp.color_space == "RGB"
    assert inp.value_range is None
    assert (inp.stats_min, inp.stats_max) == ((0.0,), (255.0,))
    assert inp.associated_files == ()
    (out,) = meta.outputs
    assert out.name == "probability"
    assert out.description == "Probabilities of the labels respectively."
    assert out.normalization_mean is None
    assert out.color_space is None  # FeatureProperties, not an image
    assert (out.stats_min, out.stats_max) == ((0.0,), (255.0,))
    assert out.associated_files == (
        AssociatedFile(
            "imagenet_labels.txt",
            "Labels for categories that the model can recognize.",
            "TENSOR_AXIS_LABELS",
        ),
    )
    expected_labels = (TESTDATA / "coral" / "imagenet_labels.txt").read_bytes()
    assert info.associated_files == {"imagenet_labels.txt": expected_labels}
    labels = labels_from_metadata(info)
    assert labels is not None
    assert len(labels) == 1001
    assert labels[:2] == ["background", "tench, Tinca tinca"]
    assert labels == expected_labels.decode().splitlines()
    # str paths work too
    assert read_model_file(str(CORAL / MOBILENET_V2)) == info


@needs_testdata
def test_edgetpu_model() -> None:
    info = parse_model_bytes(_coral(EDGETPU))
    assert info.custom_ops == ("edgetpu-custom-op",)
    assert info.edgetpu_compiled
    (op,) = info.operators
    assert (op.builtin_code, op.builtin_name, op.custom_code) == (32, "CUSTOM", "edgetpu-custom-op")
    assert info.metadata is not None  # the compiler keeps the classifier metadata
    assert info.metadata.inputs[0].normalization_mean == (127.5,)
    assert labels_from_metadata(info) is not None


@needs_testdata
def test_custom_op_via_deprecated_builtin_code() -> None:
    # This file sets only deprecated_builtin_code = 32 (builtin_code stays 0).
    info = parse_model_bytes(_coral(INVOKING_ERROR))
    assert info.custom_ops == ("fake-op-double",)
    assert not info.edgetpu_compiled
    assert info.operators[0].builtin_name == "CUSTOM"
    assert (info.metadata, info.associated_files, labels_from_metadata(info)) == (None, {}, None)


@needs_testdata
def test_movenet_without_metadata() -> None:
    info = parse_model_bytes(_coral(MOVENET))
    assert len(info.operators) == 19
    assert {"CONV_2D", "GATHER_ND", "QUANTIZE"} <= {op.builtin_name for op in info.operators}
    assert (info.custom_ops, info.metadata, info.min_runtime_version) == ((), None, "2.2.0")


@needs_testdata
@pytest.mark.parametrize("name", ALL_MODELS)
def test_operator_codes_match_generated_schema(name: str) -> None:
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    data = _coral(name)
    model = schema.Model.GetRootAs(data, 0)
    expected = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        expected.append(
            (
                max(code.BuiltinCode(), code.DeprecatedBuiltinCode()),
                custom.decode() if custom else None,
                code.Version(),
            )
        )
    info = parse_model_bytes(data)
    assert [(op.builtin_code, op.custom_code, op.version) for op in info.operators] == expected


# --- hostile input ---


def test_empty_and_tiny_input() -> None:
    assert _assert_error(b"") == "empty model file"
    assert _assert_error(b"\x00\x01\x02") == "truncated model file: only 3 bytes"
    _assert_error(b"\x08\x00\x00\x00TFL3", match="root table")


def test_random_bytes() -> None:
    rng = random.Random(1234)
    for size in (8, 16, 100, 4096):
        _assert_error(rng.randbytes(size), match="not a TFLite model")
        data = bytearray(rng.randbytes(size))
        data[4:8] = b"TFL3"
        _assert_error(bytes(data))


def test_wrong_identifier() -> None:
    data = bytearray(_synthetic_model())
    data[4:8] = b"xxxx"
    assert _assert_error(bytes(data)) == ("not a TFLite model: file identifier is b'xxxx', expected b'TFL3'")


@needs_testdata
@pytest.mark.parametrize("name", ALL_MODELS)
def test_truncated_real_model(name: str) -> None:
    data = _coral(name)
    size = len(data)
    # Cut points inside the flatbuffer (the Coral classifiers end with a zip).
    for cut in (4, 8, 12, 64, size // 4, size // 2, 3 * size // 4, 9 * size // 10):
        _assert_error(data[:cut])


@needs_testdata
def test_truncated_associated_zip_is_not_an_error() -> None:
    data = _coral(MOBILENET_V2)
    info = parse_model_bytes(data[:-10])  # cuts the zip's end-of-central-directory
    assert info.metadata is not None
    assert info.associated_files == {}
    assert labels_from_metadata(info) is None


def _root_field_pos(data: bytearray, slot: int) -> int:
    (root,) = struct.unpack_from("<I", data, 0)
    (to_vtable,) = struct.unpack_from("<i", data, root)
    (field,) = struct.unpack_from("<H", data, root - to_vtable + slot)
    return int(root + field)


@needs_testdata
@pytest.mark.parametrize("corruption", ["root-offset", "vtable-offset", "operator-codes-offset", "buffers-offset"])
def test_corrupted_offset(corruption: str) -> None:
    data = bytearray(_coral(MOBILENET_V2))
    root = struct.unpack_from("<I", data, 0)[0]
    if corruption == "root-offset":
        struct.pack_into("<I", data, 0, len(data) + 16)
    elif corruption == "vtable-offset":
        struct.pack_into("<i", data, root, -0x7FFFFFF0)
    elif corruption == "operator-codes-offset":
        struct.pack_into("<I", data, _root_field_pos(data, 6), 0xFFFFFFF0)
    else:
        struct.pack_into("<I", data, _root_field_pos(data, 12), len(data))
    message = _assert_error(bytes(data))
    assert "outside" in message


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_random_bytes(blob: bytes, with_identifier: bool) -> None:
    if with_identifier and len(blob) >= 8:
        blob = blob[:4] + b"TFL3" + blob[8:]
    _parse_or_error(blob)


def _mutate(base: bytes, draw: st.DataObject) -> bytes:
    buf = bytearray(base)
    n = len(buf)
    # Bias flips towards both ends of the file, where the tables and offsets live.
    anywhere, head = st.integers(0, n - 1), st.integers(0, min(n, 2048) - 1)
    position = st.one_of(anywhere, head, st.integers(max(0, n - 4096), n - 1))
    for _ in range(draw.draw(st.integers(0, 8))):
        buf[draw.draw(position)] ^= 1 << draw.draw(st.integers(0, 7))
    if draw.draw(st.booleans()):
        del buf[draw.draw(st.integers(0, n)) :]
    return bytes(buf)


_SYNTHETIC = _synthetic_model()
_SYNTHETIC_EXTERNAL = _synthetic_model(external=True)


@FUZZ
@given(st.data(), st.booleans())
def test_fuzz_mutated_synthetic_model(draw: st.DataObject, external: bool) -> None:
    _parse_or_error(_mutate(_SYNTHETIC_EXTERNAL if external else _SYNTHETIC, draw))


@needs_testdata
@FUZZ
@given(st.data(), st.sampled_from([EDGETPU, INVOKING_ERROR]))
def test_fuzz_mutated_real_model(draw: st.DataObject, name: str) -> None:
    _parse_or_error(_mutate(_coral(name), draw))
