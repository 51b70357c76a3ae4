"""The protobuf wire format, just enough to read a model without its weight bytes and
to write initializers one by one."""

from __future__ import annotations

import onnx

from fusekit.model_io.values import MAPPED_MIN_BYTES


# Wire-format field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer,
# TensorProto.segment / raw_data / external_data / data_location.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_SEGMENT, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 3, 9, 13, 14
_LEN, _VARINT = 2, 0


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes | bytearray) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _fields(buf, start: int, end: int):
    """Each field of the message in ``buf[start:end]``: (number, wire type, record start,
    value start, record end); a length-delimited value starts after its length."""
    pos = start
    while pos < end:
        key, value = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, stop = _read_varint(buf, value)
        elif wire == 1:
            stop = value + 8
        elif wire == _LEN:
            length, value = _read_varint(buf, value)
            stop = value + length
        elif wire == 5:
            stop = value + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if stop > end or number == 0:
            raise ValueError("field runs past its message")
        yield number, wire, pos, value, stop
        pos = stop


def _strip_model(buf, location: str) -> bytearray:
    out = bytearray()
    for number, wire, record, value, stop in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and wire == _LEN:
            out += _len_field(_MODEL_GRAPH, _strip_graph(buf, value, stop, location))
        else:
            out += buf[record:stop]
    return out


def _strip_graph(buf, start: int, end: int, location: str) -> bytearray:
    out = bytearray()
    for number, wire, record, value, stop in _fields(buf, start, end):
        tensor = _strip_tensor(buf, value, stop, location) if number == _GRAPH_INITIALIZER and wire == _LEN else None
        out += buf[record:stop] if tensor is None else _len_field(_GRAPH_INITIALIZER, tensor)
    return out


def _strip_tensor(buf, start: int, end: int, location: str) -> bytearray | None:
    """The tensor without its raw_data, pointing at it in the file instead; None to keep
    it as it is (small, segmented, already external, or raw_data given twice)."""
    fields = list(_fields(buf, start, end))
    raw = [f for f in fields if f[0] == _TENSOR_RAW_DATA and f[1] == _LEN]
    if len(raw) != 1 or any(f[0] in (_TENSOR_SEGMENT, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION) for f in fields):
        return None
    _, _, _, offset, stop = raw[0]
    if stop - offset < MAPPED_MIN_BYTES:
        return None
    out = bytearray()
    for number, _, record, _, field_stop in fields:
        if number != _TENSOR_RAW_DATA:
            out += buf[record:field_stop]
    for key, text in (("location", location), ("offset", str(offset)), ("length", str(stop - offset))):
        entry = _len_field(1, key.encode()) + _len_field(2, text.encode())
        out += _len_field(_TENSOR_EXTERNAL_DATA, entry)
    out += _key(_TENSOR_DATA_LOCATION, _VARINT) + _varint(onnx.TensorProto.EXTERNAL)
    return out


_RAW_DATA_KEY = _key(_TENSOR_RAW_DATA, _LEN)
