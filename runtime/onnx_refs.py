"""The external-data references of an ONNX graph, read with a minimal protobuf reader (no onnx package).

The runtime has no `onnx` package, and onnxruntime opens whatever file a graph's tensors name.
This reads just enough of the wire format to list every tensor stored outside the graph file
(initializers, sparse initializers, and tensors in node attributes, subgraphs and functions
included) with its `location`, `offset` and `length`, so the loader can check them against the
manifest before onnxruntime sees the graph.

Field numbers are onnx.proto3's (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
SparseTensorProto, FunctionProto, StringStringEntryProto).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeqa.artifact_checks import ADVICE, read_member, shown
from edgeqa.errors import ArtifactError
from edgeqa.manifest import Manifest

# message -> {field number: message type of that (length-delimited) field}; other fields are skipped.
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 1, 2, 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
#: TensorProto.DataType numbers of the dtypes a shared tensor may have.
DATA_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "float16": 10}
MAX_DEPTH = 64  # messages nested in messages (subgraphs in attributes), far beyond what exporters write


class GraphFormatError(ValueError):
    """The bytes are not a well-formed ONNX protobuf message."""


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor whose data lives in another file.

    Attributes:
        name: The tensor's name.
        location: The file, as written in the graph (relative to the graph's folder).
        offset: Where the data starts in that file.
        length: Bytes of data, or None when the graph does not say (the rest of the file).
        dims: The tensor's shape.
        data_type: Its TensorProto.DataType number.
    """

    name: str
    location: str | None
    offset: int
    length: int | None
    dims: tuple[int, ...] = ()
    data_type: int = 0


def external_tensors(data: bytes) -> list[ExternalTensor]:
    """Every tensor of a serialized ModelProto that names external data.

    A tensor counts as external when its data_location is EXTERNAL or it has any external_data
    entry (onnxruntime's choice between the two has changed between versions; both are checked).

    Raises:
        GraphFormatError: the bytes are not a well-formed protobuf message.
    """
    found: list[ExternalTensor] = []
    _walk(data, 0, len(data), "model", 0, found)
    return found


def _walk(data: bytes, start: int, end: int, kind: str, depth: int, found: list[ExternalTensor]) -> None:
    if depth > MAX_DEPTH:
        raise GraphFormatError(f"messages nested more than {MAX_DEPTH} deep")
    if kind == "tensor":
        _tensor(data, start, end, found)
        return
    children = _SCHEMA[kind]
    for number, wire, value_start, value_end in _fields(data, start, end):
        child = children.get(number)
        if child is not None:
            if wire != 2:
                raise GraphFormatError(f"field {number} of a {kind} message is not a message")
            _walk(data, value_start, value_end, child, depth + 1, found)


def _tensor(data: bytes, start: int, end: int, found: list[ExternalTensor]) -> None:
    name, location, offset, length = "", None, 0, None
    external, dims, data_type = False, [], 0
    for number, wire, value_start, value_end in _fields(data, start, end):
        if number == _TENSOR_DIMS and wire == 0:
            dims.append(value_start)
        elif number == _TENSOR_DIMS and wire == 2:  # packed
            position = value_start
            while position < value_end:
                dim, position = _varint(data, position, value_end)
                dims.append(dim)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = value_start
        elif number == _TENSOR_NAME and wire == 2:
            name = _text(data, value_start, value_end)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = external or value_start == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            key, value = _entry(data, value_start, value_end)
            if key == "location":
                location = value
            elif key in ("offset", "length"):
                if not value.isdigit() or len(value) > 20:
                    raise GraphFormatError(f"tensor {name!r} has external data {key} {value[:40]!r}, not a number")
                if key == "offset":
                    offset = int(value)
                else:
                    length = int(value)
    if external:
        found.append(ExternalTensor(name, location, offset, length, tuple(dims), data_type))


def _entry(data: bytes, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, value_start, value_end in _fields(data, start, end):
        if wire == 2 and number == 1:
            key = _text(data, value_start, value_end)
        elif wire == 2 and number == 2:
            value = _text(data, value_start, value_end)
    return key, value


def _text(data: bytes, start: int, end: int) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise GraphFormatError("a string field is not UTF-8") from e


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field; for varints, (value, 0) instead."""
    position = start
    while position < end:
        key, position = _varint(data, position, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise GraphFormatError("field number 0")
        if wire == 0:
            value, position = _varint(data, position, end)
            yield number, wire, value, 0
            continue
        if wire == 2:
            size, position = _varint(data, position, end)
            value_start, position = position, position + size
        elif wire == 1:
            value_start, position = position, position + 8
        elif wire == 5:
            value_start, position = position, position + 4
        else:  # groups (3, 4) are not used by onnx.proto; 6 and 7 do not exist
            raise GraphFormatError(f"wire type {wire}")
        if position > end:
            raise GraphFormatError("a field runs past the end of its message")
        yield number, wire, value_start, position


def _varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise GraphFormatError("truncated or overlong varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def check_graph_files(folder: Path, manifest: Manifest, role: str) -> None:
    """Check that a graph's external data stays in the files the manifest gives it, before onnxruntime opens it.

    A graph may read its own weights file (`ROLE_weights`) and the shared tensors' files; every
    reference must lie within that file's size, and each shared tensor the manifest describes must
    be one of the graph's, with the same dtype and shape (the runtime hands onnxruntime the mapped
    file in its place).

    Raises:
        ArtifactError: the graph is not a well-formed protobuf, or names another file or range.
    """
    entry = manifest.files[role]
    data = read_member(folder, entry.path, f"files.{role}", entry.size)
    try:
        tensors = external_tensors(data)
    except GraphFormatError as e:
        raise ArtifactError(f"{entry.path} ({role}) is not a loadable ONNX graph: {e}; re-export the artifact") from e
    allowed = {shared.role for shared in manifest.shared_tensors if role in shared.names} | {f"{role}_weights"}
    sizes = {manifest.files[r].path: manifest.files[r].size for r in allowed if r in manifest.files}
    for tensor in tensors:
        where = f"{entry.path} ({role}): tensor {shown(tensor.name)}"
        if tensor.location not in sizes:
            raise ArtifactError(
                f"{where} reads its data from {shown(tensor.location)}, which is not a weights file the manifest "
                f"gives this graph ({', '.join(sorted(sizes)) or 'none'}); {ADVICE}"
            )
        size = sizes[tensor.location]
        if tensor.offset > size or (tensor.length is not None and tensor.offset + tensor.length > size):
            raise ArtifactError(
                f"{where} reads bytes {tensor.offset}..{tensor.offset + (tensor.length or 0)} of "
                f"{tensor.location}, which has {size}; {ADVICE}"
            )
    by_name = {tensor.name: tensor for tensor in tensors}
    for shared in manifest.shared_tensors:
        name = shared.names.get(role)
        if name is None:
            continue
        found = by_name.get(name)
        if found is None or found.location != manifest.files[shared.role].path:
            raise ArtifactError(
                f"{entry.path} ({role}) has no tensor {shown(name)} stored in {manifest.files[shared.role].path}, "
                f"which the manifest's shared tensor {shared.role} replaces; {ADVICE}"
            )
        if list(found.dims) != shared.shape or found.data_type != DATA_TYPES[shared.dtype]:
            raise ArtifactError(
                f"{entry.path} ({role}): tensor {shown(name)} is {list(found.dims)} of ONNX type {found.data_type}, "
                f"the manifest's shared tensor {shared.role} is {shared.dtype} {shared.shape}; {ADVICE}"
            )
