"""Save models atomically (temp file + rename): whole protos, external data, or a graph
streamed tensor by tensor so the whole model is never built in memory."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import ExternalDataInfo
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.graph_edit import held_values
from fusekit.errors import InputError
from fusekit.model_io.export import _export_stubbed
from fusekit.model_io.values import (WEIGHTLESS_PLACEHOLDER, MappedValues, _copy, _set_location, array_header,
                                     byte_view, inline_header, plain_array)
from fusekit.model_io.wire import _GRAPH_INITIALIZER, _LEN, _MODEL_GRAPH, _RAW_DATA_KEY, _key, _varint
from fusekit.outputs import atomic_write


PROTOBUF_LIMIT = 2**31 - 1


# Models whose weights pass this size are saved with external data by default.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


# Tensors smaller than this stay inside the .onnx file when external data is written.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def weight_bytes(model: onnx.ModelProto) -> int:
    """Total bytes of the model's initializers, wherever they are stored."""
    return sum(_tensor_nbytes(t) for t in model.graph.initializer)


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    if onnx.external_data_helper.uses_external_data(t):
        info = ExternalDataInfo(t)
        return info.length or 0
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return t.ByteSize()


def inline_external_data(model: onnx.ModelProto) -> None:
    """Read every external tensor (already resolved to an absolute path) into the proto."""
    for t in model.graph.initializer:
        if onnx.external_data_helper.uses_external_data(t):
            info = ExternalDataInfo(t)
            data = MappedValues(t, Path(info.location)).read_bytes()
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = data


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None) -> list[Path]:
    """Write ``model`` atomically; return the files written.

    ``external_data=None`` writes a single file unless the weights are too large for
    protobuf. The model proto is consumed: its tensors are converted in place.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if not external_data:
        inline_external_data(model)
        atomic_write(path, lambda f: f.write(model.SerializeToString()))
        return [path]
    sources = {ExternalDataInfo(t).location for t in model.graph.initializer
               if onnx.external_data_helper.uses_external_data(t)}
    records = [_proto_record(t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    return _save_external(model, records, path, sources)


def _save_external(model: onnx.ModelProto, records: list[Record], path: Path, sources: set[str]) -> list[Path]:
    """Write ``records`` (``model``'s initializers, taken out of it) to ``path``.data and
    ``model``, pointing at them, to ``path``; ``sources``: the files weights are read from."""
    data_path = path.with_name(path.name + ".data")
    if str(data_path.resolve()) in sources:
        raise InputError(f"{data_path}: is the input model's own external data file; choose another output path")
    headers: list[onnx.TensorProto] = []
    atomic_write(data_path, lambda f: headers.extend(_write_records_external(records, f, data_path.name)))
    model.graph.initializer.extend(headers)
    serialized = model.SerializeToString()
    atomic_write(path, lambda f: f.write(serialized))
    return [path, data_path]


def save_graph(graph: gs.Graph, shell: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None) -> list[Path]:
    """Write the graph as :func:`save_model` would write ``to_model_proto(graph, shell)``,
    streaming each large weight from where it lives (an array, or a memory map of the
    input file) into the output: the whole model is never built in memory.

    The model is exported weightless. Inline (one file), it is serialized without its
    initializers; they follow as a second ``graph`` field holding only ``initializer``
    entries, each written as its header fields then its ``raw_data`` (protobuf merges
    repeated fields of a message, so readers see one graph with every initializer, in
    order). With external data (``external_data``, or weights over
    ``EXTERNAL_DATA_THRESHOLD``) the weights stream into ``<path>.data`` and the model
    file holds their headers.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    model, originals = _export_stubbed(graph, shell)
    sources = {str(held_values(t).path) for t in originals.values() if isinstance(held_values(t), MappedValues)}
    if str(path.resolve()) in sources:
        raise InputError(f"{path}: the model's weights are read from this file; choose another output path")
    tensors = [_tensor_record(t, originals) for t in model.graph.initializer]
    del model.graph.initializer[:]
    weights = sum(header.ByteSize() + length for header, _, length in tensors)
    if external_data or (external_data is None and weights > EXTERNAL_DATA_THRESHOLD):
        return _save_external(model, tensors, path, sources)
    head = model.SerializeToString()
    del model
    records = []
    for header, data, length in tensors:
        fields = header.SerializeToString()
        size = len(fields) + (len(_RAW_DATA_KEY) + len(_varint(length)) + length if data is not None else 0)
        records.append((_key(_GRAPH_INITIALIZER, _LEN) + _varint(size), fields, data, length))
    body = sum(len(prefix) + len(fields) + (len(_RAW_DATA_KEY) + len(_varint(length)) + length if data is not None else 0)
               for prefix, fields, data, length in records)
    if len(head) + body > PROTOBUF_LIMIT:
        raise InputError(f"{path}: the model is over 2 GB, too large for one protobuf file; "
                         "save it with external data (--external-data)")

    def write(out: BinaryIO) -> None:
        out.write(head)
        if not records:
            return
        out.write(_key(_MODEL_GRAPH, _LEN) + _varint(body))
        for prefix, fields, data, length in records:
            out.write(prefix)
            out.write(fields)
            if data is not None:
                out.write(_RAW_DATA_KEY + _varint(length))
                data(out)

    atomic_write(path, write)
    return [path]


Record = tuple[onnx.TensorProto, Optional[Callable[[BinaryIO], None]], int]


def _tensor_record(proto: onnx.TensorProto, originals: dict[str, gs.Constant]) -> Record:
    """(the tensor's fields but its raw_data, writer of the raw_data bytes, their length)
    for one initializer of a stubbed export; (the whole proto, None, 0) when it is
    written as it is."""
    tensor = originals.get(proto.name)
    if tensor is None or ExternalDataInfo(proto).location != WEIGHTLESS_PLACEHOLDER:
        return proto, None, 0
    values = held_values(tensor)
    if isinstance(values, MappedValues):
        header = inline_header(values.tensor)
        header.name = tensor.name
        return header, values.copy_to, values.length
    array = plain_array(tensor)
    if array is not None:
        data = byte_view(array)
        return array_header(tensor.name, array), lambda out: out.write(data), data.nbytes
    # Anything else (protos held as they are, converted dtypes): as onnx-graphsurgeon writes it.
    if isinstance(values, LazyValues):
        exported = values.tensor
        if exported.name != tensor.name:
            exported = _copy(exported)
            exported.name = tensor.name
    else:
        exported = OnnxExporter.export_tensor_proto(tensor)
    return exported, None, 0


def _proto_record(proto: onnx.TensorProto) -> Record:
    """A record (see :func:`_tensor_record`) of an initializer of a whole model proto: an
    external tensor (its location resolved to an absolute path) is copied from its file."""
    if not onnx.external_data_helper.uses_external_data(proto):
        return proto, None, 0
    source = MappedValues(proto, Path(ExternalDataInfo(proto).location))
    return inline_header(proto), source.copy_to, source.length


def _write_records_external(records: list[Record], out: BinaryIO, location: str) -> list[onnx.TensorProto]:
    """Stream each record's data into ``out`` (page-aligned, so readers can memory-map each
    tensor); return the headers pointing there (small tensors keep their bytes). A proto
    written as it is is copied first: it may be the caller's."""
    headers = []
    for header, data, length in records:
        if data is None:
            if _tensor_nbytes(header) < EXTERNAL_TENSOR_MIN_BYTES or header.data_type == onnx.TensorProto.STRING:
                headers.append(header)
                continue
            raw = header.raw_data if header.HasField("raw_data") else onnx.numpy_helper.to_array(header).tobytes()
            data, length = (lambda f, raw=raw: f.write(raw)), len(raw)
            header = _copy(header)
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                header.ClearField(field)
        elif length < EXTERNAL_TENSOR_MIN_BYTES:
            header.raw_data = _collect(data)
            headers.append(header)
            continue
        out.write(b"\0" * (-out.tell() % 4096))
        offset = out.tell()
        data(out)
        _set_location(header, location, offset, length)
        headers.append(header)
    return headers


def _collect(data: Callable[[BinaryIO], None]) -> bytes:
    buffer = io.BytesIO()
    data(buffer)
    return buffer.getvalue()
