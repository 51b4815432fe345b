"""Pure-Python reader for .tflite files and their TFLite Support metadata.

Only the low-level ``flatbuffers`` API is used (no generated schema code, no
TensorFlow), so the daemon can inspect a model before handing it to an
interpreter.  Model files may be untrusted or half-downloaded, so every offset is checked
against the buffer length: any malformed input raises :class:`TfliteFileError`
with a one-line message, never ``IndexError``/``struct.error``.

Field slots follow tensorflow/lite/schema/schema.fbs and
tensorflow_lite_support/metadata/metadata_schema.fbs: slot = 4 + 2 * index,
where a union field ``u`` takes two indices (``u_type`` then ``u``).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatbuffers import encode
from flatbuffers import number_types as nt
from flatbuffers.table import Table

__all__ = [
    "AssociatedFile",
    "ModelMetadata",
    "OperatorCode",
    "TensorMetadata",
    "TfliteFileError",
    "TfliteModelInfo",
    "labels_from_metadata",
    "parse_model_bytes",
    "read_model_file",
]


class TfliteFileError(ValueError):
    """The data is not a readable TFLite model (garbage, truncated, corrupt)."""


_MODEL_IDENTIFIER = b"TFL3"
_METADATA_IDENTIFIER = b"M001"
_EDGETPU_OP = "edgetpu-custom-op"
_CUSTOM = 32
# Associated files are small (labels, vocabularies); refuse zip bombs.
_MAX_ASSOCIATED_BYTES = 64 * 1024 * 1024

# BuiltinOperator values of common ops (schema.fbs); others are reported by number.
_BUILTIN_NAMES: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED",
    11: "L2_NORMALIZATION", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX",
    28: "TANH", 32: "CUSTOM", 34: "PAD", 36: "GATHER", 39: "TRANSPOSE", 40: "MEAN",
    41: "SUB", 42: "DIV", 43: "SQUEEZE", 45: "STRIDED_SLICE", 47: "EXP", 49: "SPLIT",
    53: "CAST", 54: "PRELU", 55: "MAXIMUM", 56: "ARG_MAX", 57: "MINIMUM",
    60: "PADV2", 65: "SLICE", 67: "TRANSPOSE_CONV", 69: "TILE", 70: "EXPAND_DIMS",
    74: "SUM", 75: "SQRT", 76: "RSQRT", 77: "SHAPE", 78: "POW", 83: "PACK",
    88: "UNPACK", 90: "FLOOR_DIV", 97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU",
    102: "SPLIT_V", 107: "GATHER_ND", 114: "QUANTIZE", 117: "HARD_SWISH",
    121: "NON_MAX_SUPPRESSION_V5", 123: "SELECT_V2", 126: "BATCH_MATMUL",
}  # fmt: skip
_ASSOCIATED_FILE_TYPES = (
    "UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS",
    "TENSOR_AXIS_SCORE_CALIBRATION", "VOCABULARY", "SCANN_INDEX_FILE",
)  # fmt: skip
_COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")
_CONTENT_IMAGE_PROPERTIES = 2  # ContentProperties union tag
_PROCESS_UNIT_NORMALIZATION = 1  # ProcessUnitOptions union tag


@dataclass(frozen=True)
class OperatorCode:
    builtin_code: int
    builtin_name: str | None  # None when not in the small name table
    custom_code: str | None
    version: int


@dataclass(frozen=True)
class AssociatedFile:
    name: str | None
    description: str | None
    type: str  # e.g. "TENSOR_AXIS_LABELS"


@dataclass(frozen=True)
class TensorMetadata:
    name: str | None
    description: str | None
    normalization_mean: tuple[float, ...] | None
    normalization_std: tuple[float, ...] | None
    color_space: str | None  # only set when the content is an image
    value_range: tuple[int, int] | None
    stats_min: tuple[float, ...] | None
    stats_max: tuple[float, ...] | None
    associated_files: tuple[AssociatedFile, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str | None
    description: str | None
    version: str | None
    author: str | None
    license: str | None
    inputs: tuple[TensorMetadata, ...]  # of the first subgraph
    outputs: tuple[TensorMetadata, ...]
    min_parser_version: str | None
    associated_files: tuple[AssociatedFile, ...]  # model-level files


@dataclass(frozen=True)
class TfliteModelInfo:
    version: int
    description: str | None
    operators: tuple[OperatorCode, ...]
    custom_ops: tuple[str, ...]
    edgetpu_compiled: bool
    metadata: ModelMetadata | None
    associated_files: dict[str, bytes]
    min_runtime_version: str | None = None  # "min_runtime_version" metadata entry
    # the first subgraph's custom operators: (custom code, output tensor indices), in graph order
    custom_op_outputs: tuple[tuple[str, tuple[int, ...]], ...] = ()


class _Buffer:
    """One flatbuffer (the model, or the nested metadata) with bounds checks."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what

    def fail(self, problem: str) -> TfliteFileError:
        return TfliteFileError(f"{self.what}: {problem}")

    def check(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.data):
            raise self.fail(f"{what} at offset {pos} (+{size} bytes) lies outside the {len(self.data)} bytes of data")

    def get(self, flags: Any, pos: int, what: str) -> Any:
        self.check(pos, flags.bytewidth, what)
        return encode.Get(flags.packer_type, self.data, pos)

    def root(self, identifier: bytes) -> _Tab:
        if len(self.data) < 8:
            raise self.fail(f"truncated: only {len(self.data)} bytes")
        found = self.data[4:8]
        if found != identifier:
            raise self.fail(f"file identifier is {found!r}, expected {identifier!r}")
        return _Tab(self, self.get(nt.UOffsetTFlags, 0, "root offset"), "root table")


class _Tab:
    """A flatbuffers Table whose vtable has been validated on construction."""

    def __init__(self, buf: _Buffer, pos: int, what: str) -> None:
        self.buf = buf
        self.what = what
        # A table starts with an soffset to its vtable; the vtable holds its own
        # size, the object size, then one uint16 offset per field.
        vtable = pos - buf.get(nt.SOffsetTFlags, pos, what)
        vt_size = buf.get(nt.VOffsetTFlags, vtable, f"vtable of {what}")
        if vt_size < 4 or vt_size % 2:
            raise buf.fail(f"{what} has an invalid vtable size {vt_size}")
        buf.check(vtable, vt_size, f"vtable of {what}")
        self.tab = Table(buf.data, pos)  # Table.Offset() is now safe to call

    def _field(self, slot: int, size: int) -> int:
        """Absolute position of the field in `slot`, 0 when absent."""
        off: int = self.tab.Offset(slot)
        if off == 0:
            return 0
        pos: int = self.tab.Pos + off
        self.buf.check(pos, size, f"field {slot} of {self.what}")
        return pos

    def scalar(self, slot: int, flags: Any, default: Any) -> Any:
        pos = self._field(slot, flags.bytewidth)
        return self.buf.get(flags, pos, self.what) if pos else default

    def _deref(self, slot: int) -> int:
        pos = self._field(slot, 4)
        return pos + self.buf.get(nt.UOffsetTFlags, pos, self.what) if pos else 0

    def table(self, slot: int, what: str) -> _Tab | None:
        pos = self._deref(slot)
        return _Tab(self.buf, pos, what) if pos else None

    def vector(self, slot: int, elem_size: int, what: str) -> tuple[int, int] | None:
        """(start, count) of a vector, its whole extent checked; None if absent."""
        pos = self._deref(slot)
        if not pos:
            return None
        count: int = self.buf.get(nt.UOffsetTFlags, pos, f"length of {what}")
        self.buf.check(pos + 4, count * elem_size, what)
        return pos + 4, count

    def tables(self, slot: int, what: str) -> list[_Tab]:
        vec = self.vector(slot, 4, what)
        if vec is None:
            return []
        start, count = vec
        return [
            _Tab(self.buf, p + self.buf.get(nt.UOffsetTFlags, p, what), f"{what}[{i}]")
            for i, p in enumerate(range(start, start + 4 * count, 4))
        ]

    def string(self, slot: int, what: str) -> str | None:
        vec = self.vector(slot, 1, what)
        if vec is None:
            return None
        start, count = vec
        try:
            return self.buf.data[start : start + count].decode("utf-8")
        except UnicodeDecodeError:
            raise self.buf.fail(f"{what} is not valid UTF-8") from None

    def floats(self, slot: int, what: str) -> tuple[float, ...] | None:
        vec = self.vector(slot, 4, what)
        if vec is None:
            return None
        start, count = vec
        return struct.unpack_from(f"<{count}f", self.buf.data, start)


def read_model_file(path: str | os.PathLike[str]) -> TfliteModelInfo:
    """Read and parse a .tflite file (OSError propagates unchanged)."""
    return parse_model_bytes(Path(path).read_bytes())


def parse_model_bytes(data: bytes) -> TfliteModelInfo:
    data = bytes(data)  # accept bytearray/memoryview too (bytes is not copied)
    if not data:
        raise TfliteFileError("empty model file")
    if len(data) < 8:
        raise TfliteFileError(f"truncated model file: only {len(data)} bytes")
    if data[4:8] != _MODEL_IDENTIFIER:
        raise TfliteFileError(f"not a TFLite model: file identifier is {data[4:8]!r}, expected {_MODEL_IDENTIFIER!r}")
    buf = _Buffer(data, "truncated or corrupt model file")
    model = buf.root(_MODEL_IDENTIFIER)
    operators = tuple(_operator_code(t) for t in model.tables(6, "operator_codes"))
    # Check every buffer's extent, not only the metadata one, and walk the
    # graph's references: a truncated download can cut anywhere and which
    # part ends up last in the file depends on the converter.
    spans = [_buffer_span(buf, b) for b in model.tables(12, "buffers")]
    subgraphs = model.tables(8, "subgraphs")
    if not subgraphs:
        raise TfliteFileError("corrupt model file: model has no subgraphs")
    for sg in subgraphs:
        _check_subgraph(buf, sg, len(operators), len(spans))

    metadata: ModelMetadata | None = None
    min_runtime: str | None = None
    for entry in model.tables(16, "metadata"):
        name = entry.string(4, "metadata name")
        index: int = entry.scalar(6, nt.Uint32Flags, 0)
        if name not in ("TFLITE_METADATA", "min_runtime_version"):
            continue
        if index >= len(spans):
            raise buf.fail(f"metadata {name!r} refers to buffer {index} but the model has {len(spans)} buffers")
        start, size = spans[index]
        payload = data[start : start + size]
        if name == "TFLITE_METADATA" and metadata is None:
            metadata = _parse_metadata(payload)
        elif name == "min_runtime_version" and min_runtime is None:
            # Fixed-size buffer, NUL padded (e.g. b"1.5.0\0\0..").
            text = payload.split(b"\0", 1)[0]
            min_runtime = text.decode("ascii", errors="replace") or None

    custom_ops = tuple(dict.fromkeys(op.custom_code for op in operators if op.custom_code))
    custom_outputs = _custom_op_outputs(subgraphs[0], operators)
    return TfliteModelInfo(
        version=model.scalar(4, nt.Uint32Flags, 0),
        description=model.string(10, "model description"),
        operators=operators,
        custom_ops=custom_ops,
        edgetpu_compiled=_EDGETPU_OP in custom_ops,
        metadata=metadata,
        associated_files=_read_associated_files(data),
        min_runtime_version=min_runtime,
        custom_op_outputs=custom_outputs,
    )


def labels_from_metadata(info: TfliteModelInfo) -> list[str] | None:
    """Lines of the first output's first TENSOR_AXIS_LABELS file, if packed."""
    if info.metadata is None or not info.metadata.outputs:
        return None
    for f in info.metadata.outputs[0].associated_files:
        if f.type == "TENSOR_AXIS_LABELS" and f.name is not None:
            content = info.associated_files.get(f.name)
            if content is None:
                return None
            # a byte order mark (a file saved on Windows) is not part of the first label
            lines = content.decode("utf-8", errors="replace").removeprefix("\ufeff").splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            return lines
    return None


def _operator_code(t: _Tab) -> OperatorCode:
    # Builtin codes >= 127 live only in the int32 builtin_code (slot 10); older
    # files only set the int8 deprecated_builtin_code (slot 4) and leave
    # builtin_code at 0.  TFLite itself takes the max of the two.
    code = max(
        t.scalar(4, nt.Int8Flags, 0),
        t.scalar(10, nt.Int32Flags, 0),
    )
    return OperatorCode(
        builtin_code=code,
        builtin_name=_BUILTIN_NAMES.get(code),
        custom_code=t.string(6, "custom_code") if code == _CUSTOM else None,
        version=t.scalar(8, nt.Int32Flags, 1),
    )


def _check_subgraph(buf: _Buffer, sg: _Tab, n_opcodes: int, n_buffers: int) -> None:
    """Bounds-check tensors and operators (the interpreter would trip on them)."""
    sg.vector(6, 4, "subgraph inputs")
    sg.vector(8, 4, "subgraph outputs")
    for tensor in sg.tables(4, "tensors"):
        tensor.vector(4, 4, "tensor shape")
        tensor.vector(10, 1, "tensor name")
        index: int = tensor.scalar(8, nt.Uint32Flags, 0)
        if index and index >= n_buffers:  # 0 is the "no data" sentinel
            raise buf.fail(f"a tensor refers to buffer {index} of {n_buffers}")
    for op in sg.tables(10, "operators"):
        opcode: int = op.scalar(4, nt.Uint32Flags, 0)
        if opcode >= n_opcodes:
            raise buf.fail(f"an operator refers to operator code {opcode} of {n_opcodes}")
        op.vector(6, 4, "operator inputs")
        op.vector(8, 4, "operator outputs")
        op.vector(14, 1, "custom options")


def _custom_op_outputs(sg: _Tab, codes: tuple[OperatorCode, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Which tensors each custom operator writes (a detection model's TFLite_Detection_PostProcess
    says by its output order which output is boxes, classes, scores and count)."""
    found: list[tuple[str, tuple[int, ...]]] = []
    for op in sg.tables(10, "operators"):
        code = codes[op.scalar(4, nt.Uint32Flags, 0)]  # bounds checked by _check_subgraph
        if code.custom_code is None:
            continue
        vec = op.vector(8, 4, "operator outputs")
        outputs = struct.unpack_from(f"<{vec[1]}i", op.buf.data, vec[0]) if vec else ()
        found.append((code.custom_code, tuple(outputs)))
    return tuple(found)


def _buffer_span(buf: _Buffer, b: _Tab) -> tuple[int, int]:
    """(start, size) of a Buffer's bytes, inline or outside the flatbuffer."""
    vec = b.vector(4, 1, "buffer data")
    if vec is not None and vec[1]:
        return vec
    # Models > 2 GB keep data after the flatbuffer: offset (slot 6) is from the
    # start of the file and only meaningful when > 1.
    offset: int = b.scalar(6, nt.Uint64Flags, 0)
    size: int = b.scalar(8, nt.Uint64Flags, 0)
    if offset > 1:
        buf.check(offset, size, "external buffer data")
        return offset, size
    return 0, 0


def _parse_metadata(payload: bytes) -> ModelMetadata:
    buf = _Buffer(payload, "invalid TFLITE_METADATA")
    root = buf.root(_METADATA_IDENTIFIER)
    subgraphs = root.tables(10, "subgraph_metadata")
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    if subgraphs:
        sg = subgraphs[0]
        inputs = tuple(_tensor_metadata(t) for t in sg.tables(8, "input_tensor_metadata"))
        outputs = tuple(_tensor_metadata(t) for t in sg.tables(10, "output_tensor_metadata"))
    return ModelMetadata(
        name=root.string(4, "name"),
        description=root.string(6, "description"),
        version=root.string(8, "version"),
        author=root.string(12, "author"),
        license=root.string(14, "license"),
        inputs=inputs,
        outputs=outputs,
        min_parser_version=root.string(18, "min_parser_version"),
        associated_files=_associated(root, 16),
    )


def _tensor_metadata(t: _Tab) -> TensorMetadata:
    color_space: str | None = None
    value_range: tuple[int, int] | None = None
    content = t.table(10, "content")
    if content is not None:
        # Content: content_properties_type (slot 4), content_properties (6), range (8).
        if content.scalar(4, nt.Uint8Flags, 0) == _CONTENT_IMAGE_PROPERTIES:
            props = content.table(6, "image_properties")
            if props is not None:
                color_space = _enum_name(_COLOR_SPACES, props.scalar(4, nt.Int8Flags, 0))
        rng = content.table(8, "value_range")
        if rng is not None:
            value_range = (rng.scalar(4, nt.Int32Flags, 0), rng.scalar(6, nt.Int32Flags, 0))
    mean = std = None
    for unit in t.tables(12, "process_units"):
        # ProcessUnit: options_type (slot 4), options (slot 6).
        if unit.scalar(4, nt.Uint8Flags, 0) == _PROCESS_UNIT_NORMALIZATION:
            opts = unit.table(6, "normalization_options")
            if opts is not None:
                mean, std = opts.floats(4, "mean"), opts.floats(6, "std")
                break
    stats = t.table(14, "stats")  # Stats: max is field 0, min is field 1
    return TensorMetadata(
        name=t.string(4, "tensor name"),
        description=t.string(6, "tensor description"),
        normalization_mean=mean,
        normalization_std=std,
        color_space=color_space,
        value_range=value_range,
        stats_min=stats.floats(6, "stats.min") if stats else None,
        stats_max=stats.floats(4, "stats.max") if stats else None,
        associated_files=_associated(t, 16),
    )


def _associated(t: _Tab, slot: int) -> tuple[AssociatedFile, ...]:
    return tuple(
        AssociatedFile(
            name=f.string(4, "associated file name"),
            description=f.string(6, "associated file description"),
            type=_enum_name(_ASSOCIATED_FILE_TYPES, f.scalar(8, nt.Int8Flags, 0)),
        )
        for f in t.tables(slot, "associated_files")
    )


def _enum_name(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"UNKNOWN({value})"


def _read_associated_files(data: bytes) -> dict[str, bytes]:
    """Files zipped after the flatbuffer by the metadata writer; best effort.

    zipfile copes with the model bytes prepended to the archive.  A missing or
    damaged archive is not a model error, so it just yields fewer files.
    """
    # NotImplementedError: zipfile's answer to an unsupported compression method
    errors = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error,
              OSError, EOFError, ValueError, NotImplementedError, RuntimeError)  # fmt: skip
    files: dict[str, bytes] = {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except errors:
        return files
    total = 0
    with archive:
        for member in archive.infolist():
            total += member.file_size
            if member.is_dir() or total > _MAX_ASSOCIATED_BYTES:
                continue
            try:
                # ZipExtFile never returns more than the declared file_size.
                files[member.filename] = archive.read(member)
            except errors:
                continue
    return files
