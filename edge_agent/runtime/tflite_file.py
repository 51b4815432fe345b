"""Pure-Python reader for .tflite files and their TFLite Support metadata.

Only the low-level ``flatbuffers`` API is used (no generated schema code, no
TensorFlow), so the daemon can inspect a model before handing it to an
interpreter.  Model files may be untrusted or half-downloaded, so every offset is checked
against the buffer length: any malformed input raises :class:`TfliteFileError`
with a one-line message, never ``IndexError``/``struct.error``.

Beyond the bounds, `parse_model_bytes` verifies what the interpreter takes on trust and would
crash on (SIGSEGV in a kernel's Prepare, an uncaught UnicodeDecodeError in the Python wrapper): every
index (tensor, buffer, operator code, subgraph) in range, names valid UTF-8, shapes non-negative
and of a sane size, constant data the size its shape says, quantization parameters consistent and
within their type's range, each common operator given the inputs its kernel reads. Found by fuzzing: a uint8 input whose zero point became 17266 (one byte
changed) kills the process inside allocate_tensors(); a tensor name with one byte changed raised
UnicodeDecodeError from get_input_details().

Field slots follow tensorflow/lite/schema/schema.fbs and
tensorflow_lite_support/metadata/metadata_schema.fbs: slot = 4 + 2 * index,
where a union field ``u`` takes two indices (``u_type`` then ``u``).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from flatbuffers import encode
from flatbuffers import number_types as nt
from flatbuffers.table import Table

from edge_agent.bounded import read_bytes_bounded

__all__ = [
    "AssociatedFile",
    "ModelMetadata",
    "OperatorCode",
    "TensorMetadata",
    "TfliteFileError",
    "TfliteModelInfo",
    "constant_data_spans",
    "labels_from_metadata",
    "parse_model_bytes",
    "read_model_file",
]


class TfliteFileError(ValueError):
    """The data is not a readable TFLite model (garbage, truncated, corrupt).

    `check` names the verification that failed, for statistics and tests: "identifier", "bounds",
    "utf8", "index", "arity", "shape", "type", "buffer_size", "quantization"."""

    def __init__(self, message: str, check: str = "bounds") -> None:
        super().__init__(message)
        self.check = check


_MODEL_IDENTIFIER = b"TFL3"
_METADATA_IDENTIFIER = b"M001"
_EDGETPU_OP = "edgetpu-custom-op"
_CUSTOM = 32
# Associated files are small (labels, vocabularies); refuse zip bombs.
_MAX_ASSOCIATED_BYTES = 64 * 1024 * 1024
_MAX_MODEL_BYTES = 1 << 30  # the loader's limit too (loader.MAX_MODEL_BYTES)

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

# TensorType (schema.fbs): name and bytes per element; None for types whose data has no fixed
# size per element (strings, resources, variants, packed 2- and 4-bit integers)
_TENSOR_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", None), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", None),
    18: ("bfloat16", 2), 19: ("int2", None), 20: ("uint4", None), 21: ("float8_e4m3fn", 1),
    22: ("float8_e5m2", 1),
}  # fmt: skip
# the range a quantized tensor's zero point must lie in, per integer type: a uint8 tensor with
# zero point 17266 makes the quantized kernels index their tables out of bounds (SIGSEGV)
_ZERO_POINT_RANGE: dict[int, tuple[int, int]] = {
    3: (0, 255), 9: (-128, 127), 7: (-32768, 32767), 16: (0, 65535),
    17: (-8, 7), 19: (-2, 1), 20: (0, 15),
}  # fmt: skip
# The fewest inputs each builtin kernel reads by position, without checking how many it was given
# (schema.fbs op numbers; the kernels in tensorflow/lite/kernels). An operator with fewer makes the
# kernel, or the XNNPACK delegate looking at it, read past the node's input array: undefined
# behaviour that crashed one process and not the next (fuzzing: SLICE, 3 inputs, cut to 2).
# Only minimums: extra inputs are refused by the kernels' own checks, not read out of bounds.
# Ops not listed are left to the runtime (and to the trial load in a child).
_MIN_INPUTS: dict[int, int] = {
    0: 2, 1: 1, 2: 1, 3: 2, 4: 2, 6: 1, 9: 2, 11: 1, 14: 1, 17: 1, 18: 2, 19: 1, 21: 1, 22: 1,
    23: 2, 25: 1, 28: 1, 34: 2, 36: 2, 39: 2, 40: 2, 41: 2, 42: 2, 43: 1, 45: 4, 47: 1, 49: 2,
    53: 1, 54: 2, 55: 2, 56: 2, 57: 2, 60: 3, 65: 3, 67: 3, 69: 2, 70: 2, 74: 2, 75: 1, 76: 1,
    77: 1, 78: 2, 83: 1, 88: 1, 90: 2, 97: 2, 98: 1, 102: 3, 107: 2, 114: 1, 117: 1, 121: 6,
    123: 3, 126: 2,
}  # fmt: skip
# Ops whose output has, by definition, the shape of their first input (element-wise). The XNNPACK
# delegate folds a DEQUANTIZE of constant float16 weights using the declared output shape: an
# output declared 8192 times larger than its input made it read past the weights (SIGSEGV).
_SAME_SHAPE_OPS = frozenset({6, 11, 14, 19, 21, 25, 28, 47, 53, 75, 76, 98, 114, 117})
_MAX_RANK = 16  # TFLite kernels handle up to 6 dimensions; 16 leaves room and refuses garbage
_MAX_TENSOR_BYTES = 1 << 31  # one tensor: 2 GiB (a 224x224 image model's largest is a few MB)


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

    def fail(self, problem: str, check: str = "bounds") -> TfliteFileError:
        return TfliteFileError(f"{self.what}: {problem}", check)

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
            raise self.fail(f"file identifier is {found!r}, expected {identifier!r}", "identifier")
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
            raise self.buf.fail(f"{what} is not valid UTF-8", "utf8") from None

    def floats(self, slot: int, what: str) -> tuple[float, ...] | None:
        return self.numbers(slot, "f", what)

    def numbers(self, slot: int, code: str, what: str) -> tuple[Any, ...] | None:
        """A vector of scalars of struct format `code` ("i": int32, "q": int64, "f": float32)."""
        vec = self.vector(slot, struct.calcsize(code), what)
        if vec is None:
            return None
        start, count = vec
        return struct.unpack_from(f"<{count}{code}", self.buf.data, start)


def read_model_file(path: str | os.PathLike[str]) -> TfliteModelInfo:
    """Read and parse a .tflite file (OSError propagates unchanged; a path that is not a regular
    file, or a file over 1 GiB, is a bounded.FileReadError, an OSError)."""
    return parse_model_bytes(read_bytes_bounded(os.fspath(path), what="model file", max_bytes=_MAX_MODEL_BYTES))


def parse_model_bytes(data: bytes) -> TfliteModelInfo:
    data = bytes(data)  # accept bytearray/memoryview too (bytes is not copied)
    if not data:
        raise TfliteFileError("empty model file")
    if len(data) < 8:
        raise TfliteFileError(f"truncated model file: only {len(data)} bytes")
    if data[4:8] != _MODEL_IDENTIFIER:
        raise TfliteFileError(
            f"not a TFLite model: file identifier is {data[4:8]!r}, expected {_MODEL_IDENTIFIER!r}", "identifier"
        )
    buf = _Buffer(data, "truncated or corrupt model file")
    model = buf.root(_MODEL_IDENTIFIER)
    operators = tuple(_operator_code(t) for t in model.tables(6, "operator_codes"))
    # Check every buffer's extent, not only the metadata one, and walk the
    # graph's references: a truncated download can cut anywhere and which
    # part ends up last in the file depends on the converter.
    spans = [_buffer_span(buf, b) for b in model.tables(12, "buffers")]
    subgraphs = model.tables(8, "subgraphs")
    if not subgraphs:
        raise TfliteFileError("corrupt model file: model has no subgraphs", "index")
    n_tensors = [_verify_subgraph(buf, i, sg, operators, spans) for i, sg in enumerate(subgraphs)]
    _verify_signatures(buf, model, n_tensors)

    metadata: ModelMetadata | None = None
    min_runtime: str | None = None
    for entry in model.tables(16, "metadata"):
        name = entry.string(4, "metadata name")
        index: int = entry.scalar(6, nt.Uint32Flags, 0)
        if name not in ("TFLITE_METADATA", "min_runtime_version"):
            continue
        if index >= len(spans):
            raise buf.fail(
                f"metadata {name!r} refers to buffer {index} but the model has {len(spans)} buffers", "index"
            )
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


def constant_data_spans(data: bytes) -> tuple[tuple[int, int], ...]:
    """(start, size) of every non-empty buffer of a valid model: where its weights lie, as opposed
    to the structure around them (a fuzzer aims at the structure; a change in weights only changes
    the results)."""
    model = _Buffer(bytes(data), "model file").root(_MODEL_IDENTIFIER)
    spans = (_buffer_span(model.buf, b) for b in model.tables(12, "buffers"))
    return tuple(span for span in spans if span[1])


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


def _verify_subgraph(
    buf: _Buffer, n: int, sg: _Tab, codes: tuple[OperatorCode, ...], spans: list[tuple[int, int]]
) -> int:
    """Verify what the interpreter takes on trust in subgraph `n`; return its tensor count."""
    sg.string(12, f"subgraph {n} name")
    tensors = sg.tables(4, "tensors")
    count = len(tensors)
    for i, tensor in enumerate(tensors):
        _verify_tensor(buf, f"subgraph {n} tensor {i}", tensor, spans)
    shapes = [t.numbers(4, "i", "tensor shape") or () for t in tensors]
    for role, slot in (("input", 6), ("output", 8)):
        for index in sg.numbers(slot, "i", f"subgraph {n} {role}s") or ():
            if not 0 <= index < count:
                raise buf.fail(f"subgraph {n} {role} refers to tensor {index} of {count}", "index")
    producer: dict[int, int] = {}
    for k, op in enumerate(sg.tables(10, "operators")):
        opcode: int = op.scalar(4, nt.Uint32Flags, 0)
        if opcode >= len(codes):
            raise buf.fail(f"operator {k} refers to operator code {opcode} of {len(codes)}", "index")
        ends = _verify_operator_tensors(buf, k, op, count, producer)
        _verify_operator_kernel(buf, k, op, code=codes[opcode], shapes=shapes, ends=ends)
        op.vector(14, 1, "custom options")
        if op.scalar(10, nt.Uint8Flags, 0):
            op.table(12, f"operator {k} builtin options")
        # custom options of a model > 2 GB live after the flatbuffer, like its external buffers
        offset: int = op.scalar(22, nt.Uint64Flags, 0)
        if offset > 1:
            buf.check(offset, op.scalar(24, nt.Uint64Flags, 0), f"operator {k} custom options")
    return count


def _verify_operator_tensors(buf: _Buffer, k: int, op: _Tab, count: int, producer: dict[int, int]) -> dict[str, int]:
    """Operator k's tensor indices are in range, and no tensor is written by two operators
    (`producer`: the writer of each tensor so far). Returns how many tensors each role lists."""
    ends: dict[str, int] = {}
    for role, slot in (("input", 6), ("output", 8), ("intermediate", 20)):
        indices = op.numbers(slot, "i", f"operator {k} {role}s") or ()
        ends[role] = len(indices)
        for index in indices:
            if not -1 <= index < count:  # -1: an optional input left out
                raise buf.fail(f"operator {k} {role} refers to tensor {index} of {count}", "index")
    # the graph is in SSA form: a tensor written by two operators (an operators vector whose
    # entries point at the same table) confuses the arena planner into overlapping buffers
    for index in op.numbers(8, "i", "operator outputs") or ():
        if index >= 0 and producer.setdefault(index, k) != k:
            raise buf.fail(f"tensor {index} is written by both operator {producer[index]} and operator {k}", "index")
    return ends


def _verify_operator_kernel(
    buf: _Buffer, k: int, op: _Tab, *, code: OperatorCode, shapes: list[tuple[Any, ...]], ends: dict[str, int]
) -> None:
    """What operator k's kernel reads without checking: an element-wise op keeps the number of
    elements, and an op has the inputs and output its kernel indexes."""
    ins, outs = op.numbers(6, "i", "operator inputs") or (), op.numbers(8, "i", "operator outputs") or ()
    if (
        code.custom_code is None
        and code.builtin_code in _SAME_SHAPE_OPS
        and ins
        and outs
        and -1 not in (ins[0], outs[0])
    ) and math.prod(shapes[ins[0]]) != math.prod(shapes[outs[0]]):
        raise buf.fail(
            f"operator {k} ({code.builtin_name}) maps tensor {ins[0]} of shape {list(shapes[ins[0]])} to tensor "
            f"{outs[0]} of shape {list(shapes[outs[0]])}: an element-wise op keeps the number of elements",
            "shape",
        )
    need = _MIN_INPUTS.get(code.builtin_code, 0) if code.custom_code is None else 0
    if ends["input"] < need or (code.builtin_code in _MIN_INPUTS and ends["output"] < 1):
        name = code.builtin_name or f"builtin {code.builtin_code}"
        raise buf.fail(
            f"operator {k} ({name}) has {ends['input']} input(s) and {ends['output']} output(s); its kernel reads "
            f"at least {need} and 1",
            "arity",
        )


def _verify_tensor(buf: _Buffer, what: str, tensor: _Tab, spans: list[tuple[int, int]]) -> None:
    name = tensor.string(10, f"{what} name")  # the Python interpreter decodes it: UnicodeDecodeError
    what = f"{what} ({name})" if name else what
    type_code: int = tensor.scalar(6, nt.Int8Flags, 0)
    if type_code not in _TENSOR_TYPES:
        raise buf.fail(f"{what} has unknown type {type_code}", "type")
    type_name, itemsize = _TENSOR_TYPES[type_code]
    shape = tensor.numbers(4, "i", f"{what} shape") or ()
    tensor.numbers(18, "i", f"{what} shape signature")  # -1 marks a dynamic dimension there
    if len(shape) > _MAX_RANK or any(d < 0 for d in shape):
        raise buf.fail(f"{what} has an invalid shape {list(shape)[: _MAX_RANK + 1]}", "shape")
    elements = 1
    for d in shape:
        elements *= d
    if itemsize is not None and elements * itemsize > _MAX_TENSOR_BYTES:
        raise buf.fail(
            f"{what} of shape {list(shape)} needs {elements * itemsize} bytes, more than the {_MAX_TENSOR_BYTES} allowed",
            "shape",
        )
    index: int = tensor.scalar(8, nt.Uint32Flags, 0)
    if index >= len(spans) and index:  # 0 is the "no data" sentinel
        raise buf.fail(f"{what} refers to buffer {index} of {len(spans)}", "index")
    sparse = tensor.table(16, f"{what} sparsity") is not None
    size = spans[index][1] if index < len(spans) else 0
    if size and itemsize is not None and not sparse and size != elements * itemsize:
        raise buf.fail(
            f"{what} holds {size} bytes of constant data, but its shape {list(shape)} of {type_name} needs {elements * itemsize}",
            "buffer_size",
        )
    quant = tensor.table(12, f"{what} quantization")
    if quant is not None:
        _verify_quantization(buf, what, quant, type_code, shape)


def _verify_quantization(buf: _Buffer, what: str, quant: _Tab, type_code: int, shape: tuple[int, ...]) -> None:
    quant.floats(4, f"{what} quantization min")
    quant.floats(6, f"{what} quantization max")
    scales = quant.floats(8, f"{what} quantization scales") or ()
    zero_points = quant.numbers(10, "q", f"{what} quantization zero points") or ()
    if quant.scalar(12, nt.Uint8Flags, 0):
        quant.table(14, f"{what} custom quantization")
    if not scales or not zero_points:
        return  # the interpreter reads a tensor without both as not quantized
    if len(scales) != len(zero_points):
        raise buf.fail(
            f"{what} has {len(scales)} quantization scales but {len(zero_points)} zero points", "quantization"
        )
    if not all(math.isfinite(s) and s >= 0 for s in scales):
        bad = next(s for s in scales if not (math.isfinite(s) and s >= 0))
        raise buf.fail(f"{what} has quantization scale {bad}, not a finite number >= 0", "quantization")
    lo_hi = _ZERO_POINT_RANGE.get(type_code)
    if lo_hi is not None:
        lo, hi = lo_hi
        bad_zp = next((z for z in zero_points if not lo <= z <= hi), None)
        if bad_zp is not None:
            type_name = _TENSOR_TYPES[type_code][0]
            raise buf.fail(
                f"{what} has zero point {bad_zp}, outside the {type_name} range [{lo}, {hi}]", "quantization"
            )
    if len(scales) > 1:
        axis: int = quant.scalar(16, nt.Int32Flags, 0)
        if not 0 <= axis < len(shape) or shape[axis] != len(scales):
            raise buf.fail(
                f"{what} has {len(scales)} per-channel scales along dimension {axis} of its shape {list(shape)}",
                "quantization",
            )


def _verify_signatures(buf: _Buffer, model: _Tab, n_tensors: list[int]) -> None:
    """Signature defs name tensors by index; the Python interpreter reads them all on construction."""
    for k, sig in enumerate(model.tables(18, "signature_defs")):
        sig.string(8, f"signature {k} key")
        graph: int = sig.scalar(12, nt.Uint32Flags, 0)
        if graph >= len(n_tensors):
            raise buf.fail(f"signature {k} refers to subgraph {graph} of {len(n_tensors)}", "index")
        for role, slot in (("input", 4), ("output", 6)):
            for j, entry in enumerate(sig.tables(slot, f"signature {k} {role}s")):
                entry.string(4, f"signature {k} {role} {j} name")
                index: int = entry.scalar(6, nt.Uint32Flags, 0)
                if index >= n_tensors[graph]:
                    raise buf.fail(f"signature {k} {role} {j} refers to tensor {index} of {n_tensors[graph]}", "index")


def _custom_op_outputs(sg: _Tab, codes: tuple[OperatorCode, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Which tensors each custom operator writes (a detection model's TFLite_Detection_PostProcess
    says by its output order which output is boxes, classes, scores and count)."""
    found: list[tuple[str, tuple[int, ...]]] = []
    for op in sg.tables(10, "operators"):
        code = codes[op.scalar(4, nt.Uint32Flags, 0)]  # bounds checked by _verify_subgraph
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
