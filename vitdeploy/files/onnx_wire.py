"""Reading an ONNX file's protobuf wire format directly: the few fields vitdeploy needs before any runtime opens a
file (where its external data lives, its metadata), so that a deployment machine without the `onnx` package can read
them too. Field numbers are onnx.proto's."""

from __future__ import annotations

from typing import Any


def external_data_locations(data: bytes) -> list[tuple[str, str]]:
    """(initializer name, external-data location) for every initializer of a serialized ModelProto that keeps its
    data in another file, read straight from protobuf's wire format, so that a deployment machine without the
    `onnx` package can check them too. Field numbers are onnx.proto's: ModelProto.graph = 7,
    GraphProto.initializer = 5, TensorProto.name = 8, .external_data = 13 (StringStringEntryProto key = 1,
    value = 2), .data_location = 14 (EXTERNAL = 1). Raises ValueError when `data` is not a protobuf message."""
    found = []
    for graph in _fields(data, 7):
        for tensor in _fields(graph, 5):
            name = b"".join(_fields(tensor, 8)).decode("utf-8", "replace")
            if 1 not in _fields(tensor, 14, varint=True):
                continue
            entries = {b"".join(_fields(e, 1)): b"".join(_fields(e, 2)) for e in _fields(tensor, 13)}
            found.append((name, entries.get(b"location", b"").decode("utf-8", "replace")))
    return found


def metadata_props_from_bytes(data: bytes) -> dict[str, str]:
    """A serialized ModelProto's metadata_props (field 14: StringStringEntryProto key = 1, value = 2), read from the
    wire format like external_data_locations, so that choosing a runtime for a file needs no `onnx` package.
    Raises ValueError when `data` is not a protobuf message."""
    def text(entry: memoryview, number: int) -> str:
        return b"".join(_fields(entry, number)).decode("utf-8", "replace")

    return {text(entry, 1): text(entry, 2) for entry in _fields(data, 14)}


def _fields(message: bytes | memoryview, number: int, varint: bool = False) -> list[Any]:
    """The values of one field of a protobuf message: length-delimited payloads (or varints with `varint`)."""
    view, values, i = memoryview(message), [], 0
    while i < len(view):
        key, i = _varint(view, i)
        field, wire = key >> 3, key & 7
        if wire == 0:  # varint
            value, i = _varint(view, i)
            if varint and field == number:
                values.append(value)
        elif wire == 2:  # length-delimited
            size, i = _varint(view, i)
            if not varint and field == number:
                values.append(view[i : i + size])
            i += size
        elif wire in (1, 5):  # fixed 64 / 32 bits
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}: not a protobuf message")
    return values


def _varint(view: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(view):
            raise ValueError("the message ends inside a field")
        byte = view[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i
