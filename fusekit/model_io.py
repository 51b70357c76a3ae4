"""Load ONNX models into an editable onnx-graphsurgeon graph and save them back.

Loading never copies initializer bytes: the model file is parsed with the bytes of its
large initializers left out (they are found by walking the protobuf wire format), and
those tensors, like external-data ones, are memory-mapped from their file on demand.
External data paths are checked to stay inside the model's folder (untrusted models).
Saving is atomic (temp file + rename) and writes external data when the model needs it;
:func:`save_graph` streams the weights into the file tensor by tensor, never building the
whole model in memory.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.errors import InputError

log = logging.getLogger(__name__)
# onnx-graphsurgeon prints its own warnings to stdout; fusekit reports problems itself.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

PROTOBUF_LIMIT = 2**31 - 1
# Models whose weights pass this size are saved with external data by default.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Tensors smaller than this stay inside the .onnx file when external data is written.
EXTERNAL_TENSOR_MIN_BYTES = 1024
_MODEL_FIELDS_GS_DROPS = ("doc_string", "domain", "model_version")


class MappedValues(LazyValues):
    """Values of an external-data tensor, memory-mapped from its file when loaded."""

    def __init__(self, tensor: onnx.TensorProto, path: Path) -> None:
        super().__init__(tensor)
        self.path = path
        info = ExternalDataInfo(tensor)
        self.offset = info.offset or 0
        self.length = info.length or self.nbytes

    def load(self) -> np.ndarray:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        if np_dtype.kind in "OV" or self.tensor.data_type in _PACKED_TYPES:
            return onnx.numpy_helper.to_array(_inline_copy(self.tensor, self.read_bytes()))
        # copy-on-write: a pass that edits the array in place gets private pages, the file stays
        array = np.memmap(self.path, dtype=np_dtype, mode="c", offset=self.offset,
                          shape=tuple(self.shape))
        return array.view(np.ndarray) if array.ndim else np.array(array)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    def copy_to(self, out: BinaryIO) -> None:
        """Stream the tensor's bytes into ``out`` without holding them all in memory."""
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            step = 64 << 20
            for start in range(self.offset, self.offset + self.length, step):
                out.write(m[start:min(start + step, self.offset + self.length)])


_PACKED_TYPES = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


class FileSliceValues(MappedValues):
    """Values of an initializer stored in the model file itself (its ``raw_data``),
    memory-mapped from that file: loading the model never copies them."""


# In-file initializers with at least this many bytes of raw_data are memory-mapped from
# the model file instead of parsed (above WEIGHTLESS_INLINE_MAX_BYTES: checks never see them).
MAPPED_MIN_BYTES = 4096


@dataclass
class LoadedModel:
    """An editable graph plus what onnx-graphsurgeon does not carry (the model's shell)."""

    graph: gs.Graph
    shell: onnx.ModelProto  # the source model without its graph: metadata, opsets, docs
    path: Path | None = None


def load_model(source: str | os.PathLike | onnx.ModelProto) -> LoadedModel:
    """Load a model file or ``ModelProto`` into an editable graph.

    A ``ModelProto`` given by the caller is never modified: its graph is imported by
    reference and written tensors are replaced, not edited, by passes.
    """
    if isinstance(source, onnx.ModelProto):
        model, path = source, None
        check_is_onnx(model, "<ModelProto>")
    else:
        path = Path(source)
        model = read_model_file(path, map_weights=True)
    shell = _shell_of(model)
    graph = gs.import_onnx(model)
    _keep_overridable_inputs(model, graph, shell)
    _complete_import(model.graph, graph, caller_owned=path is None)
    _complete_functions(model, graph, caller_owned=path is None)
    if path is not None:
        _map_external_tensors(graph, path.parent, model_name=str(path))
        _inline_own_slices(shell.graph.initializer, path)
    name_unnamed_nodes(graph)
    return LoadedModel(graph=graph, shell=shell, path=path)


def _keep_overridable_inputs(model: onnx.ModelProto, graph: gs.Graph, shell: onnx.ModelProto) -> None:
    """From IR 4 on, an initializer that is also a graph input is a default the user may
    override: it stays a graph input (not a constant any pass may fold), and its default
    value is kept in ``shell.graph.initializer`` for :func:`to_model_proto`."""
    if model.ir_version < 4:
        return
    initializers = {t.name: t for t in model.graph.initializer}
    tensors = graph.tensors()
    for position, vi in enumerate(model.graph.input):
        default = initializers.get(vi.name)
        tensor = tensors.get(vi.name)
        if default is None or not isinstance(tensor, gs.Constant):
            continue
        shell.graph.initializer.append(default)
        tensor.to_variable(dtype=tensor.dtype, shape=list(tensor.shape))
        tensor.type = "tensor_type"  # what gs's importer sets on variables; to_variable does not
        graph.inputs.insert(position, tensor)


def read_model_file(path: Path, map_weights: bool = False) -> onnx.ModelProto:
    """Parse a model file (without its external data), or raise a one-line InputError.

    ``map_weights``: the raw bytes of large top-level initializers are not parsed; each
    such tensor becomes an external-data reference (absolute location: the model file
    itself, offset, length) that :func:`load_model` memory-maps.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    model = _parse_mapped(path) if map_weights else None
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise InputError(f"{path}: not a valid ONNX file (truncated or corrupt protobuf: {exc})") from None
    check_is_onnx(model, str(path))
    return model


def _parse_mapped(path: Path) -> onnx.ModelProto | None:
    """The model with its large initializers' raw_data replaced by references into the
    file, or None when the file is not a well-formed model this way (the caller parses
    it normally and reports what is wrong)."""
    location = str(path.resolve())
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                stripped = _strip_model(view, location)
            except (ValueError, IndexError):
                stripped = None
            finally:
                view.release()
    if stripped is None:
        return None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(stripped))
    except DecodeError:
        return None
    return model


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


def _inline_own_slices(tensors, path: Path) -> None:
    """Read back into ``tensors`` the bytes of those that point into the model file itself."""
    _inline_file_slices(tensors, {str(path.resolve())})


def _inline_file_slices(tensors, files: set[str]) -> None:
    for t in tensors:
        if onnx.external_data_helper.uses_external_data(t):
            location = ExternalDataInfo(t).location
            if location in files:
                data = FileSliceValues(t, Path(location)).read_bytes()
                del t.external_data[:]
                t.ClearField("data_location")
                t.raw_data = data


def check_is_onnx(model: onnx.ModelProto, where: str) -> None:
    """Reject protobufs that parsed but are not ONNX models, and unsupported opsets."""
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise InputError(f"{where}: not an ONNX model (no graph, IR version or opset import)")
    max_opset = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= max_opset:
            raise InputError(
                f"{where}: unsupported opset {opset.version} (this onnx {onnx.__version__} "
                f"supports 1..{max_opset})")
    if model.ir_version > onnx.IR_VERSION:
        raise InputError(f"{where}: unsupported IR version {model.ir_version} "
                         f"(this onnx supports up to {onnx.IR_VERSION})")


def _shell_of(model: onnx.ModelProto) -> onnx.ModelProto:
    shell = onnx.ModelProto()
    for field in _MODEL_FIELDS_GS_DROPS:
        setattr(shell, field, getattr(model, field))
    shell.metadata_props.extend(model.metadata_props)
    shell.opset_import.extend(model.opset_import)
    return shell


def _map_external_tensors(graph: gs.Graph, base_dir: Path, model_name: str) -> None:
    """Swap each external-data initializer's lazy values for a memory map of its file."""
    base = base_dir.resolve()
    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)
        if not isinstance(values, LazyValues) or not onnx.external_data_helper.uses_external_data(values.tensor):
            continue
        proto = values.tensor
        path = resolve_external_path(proto, base, model_name)
        own = path == Path(model_name).resolve()  # raw_data of the model file itself
        mapped = (FileSliceValues if own else MappedValues)(proto, path)
        if mapped.offset + mapped.length > path.stat().st_size:
            raise InputError(f"{model_name}: external data of tensor {proto.name!r} runs past the end "
                             f"of {path.name} (truncated file?)")
        _set_location(proto, str(path), mapped.offset, mapped.length)
        tensor._values = mapped
        if own:  # inline in the model: onnx-graphsurgeon would mark the values it reads as external
            tensor.data_location = None


def resolve_external_path(proto: onnx.TensorProto, base: Path, model_name: str) -> Path:
    """The absolute file of an external tensor, refusing paths that leave the model's folder."""
    location = ExternalDataInfo(proto).location
    if not location:
        raise InputError(f"{model_name}: tensor {proto.name!r} has external data with no location")
    candidate = Path(location)
    if candidate.is_absolute():
        # Only locations fusekit itself made absolute (after checking them) are accepted.
        resolved = candidate.resolve()
    else:
        resolved = (base / candidate).resolve()
        if base not in resolved.parents:
            raise InputError(f"{model_name}: tensor {proto.name!r} points outside the model folder "
                             f"({location!r}); refusing to read it")
    if not resolved.is_file():
        raise InputError(f"{model_name}: external data file {location!r} of tensor {proto.name!r} is missing")
    return resolved


def _set_location(proto: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del proto.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value
    proto.data_location = onnx.TensorProto.EXTERNAL


def name_unnamed_nodes(graph: gs.Graph) -> None:
    """Give every node a unique name, so reports, lint and --trace can name it."""
    taken = {node.name for node in graph.nodes if node.name}
    counter = 0
    for node in graph.nodes:
        if node.name:
            continue
        while f"{node.op}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op}_{counter}"
        taken.add(node.name)


# Declared types onnx-graphsurgeon cannot hold (optional, map, sequences), per gs.Graph.
_TYPES_KEY = "_fusekit_declared_types"


def _complete_import(proto: onnx.GraphProto | onnx.FunctionProto, graph: gs.Graph, caller_owned: bool) -> None:
    """Put back, on each (sub)graph, what ``gs.import_onnx`` loses or would let leak.

    - Declared non-tensor types (optional, map, sequences): onnx-graphsurgeon keeps only
      an element type (exporting an optional fails), so they are kept on the graph and
      :func:`to_model_proto` writes them back.
    - Attributes onnx-graphsurgeon skips (type protos, sparse tensors, lists of tensors
      or graphs): kept as protos, which its exporter writes as they are.
    - Tensor attributes of a caller's model (``Constant`` values): onnx-graphsurgeon's
      exporter writes a name into the ``TensorProto`` it exports (an unnamed one gains
      an empty name), so each gets a private copy when first exported.
    """
    if isinstance(proto, onnx.GraphProto):
        declared = {vi.name: vi.type for vi in (*proto.input, *proto.output, *proto.value_info)
                    if vi.type.WhichOneof("value") not in (None, "tensor_type")}
        if declared:
            graph.__dict__[_TYPES_KEY] = {name: _copy(t) for name, t in declared.items()}
    for node_proto, node in zip(proto.node, graph.nodes):
        for attr in node_proto.attribute:
            value = node.attrs.get(attr.name)
            if attr.name not in node.attrs and not attr.ref_attr_name and attr.type in _ATTRS_GS_SKIPS:
                node.attrs[attr.name] = onnx.helper.get_attribute_value(attr)
            elif attr.type == onnx.AttributeProto.GRAPH and isinstance(value, gs.Graph):
                _complete_import(attr.g, value, caller_owned)
            elif caller_owned and isinstance(value, gs.Constant) and type(value._values) is LazyValues:
                value._values = _CopyOnUseValues(value._values)


def _complete_functions(model: onnx.ModelProto, graph: gs.Graph, caller_owned: bool) -> None:
    functions = {(f.domain, f.name): f for f in model.functions}
    for function in graph.functions:
        proto = functions.get((function.domain, function.name))
        if proto is not None:
            _complete_import(proto, function, caller_owned)


_ATTRS_GS_SKIPS = frozenset({
    onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS, onnx.AttributeProto.SPARSE_TENSOR,
    onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.TENSORS, onnx.AttributeProto.GRAPHS})


class _CopyOnUseValues(LazyValues):
    """Lazy values whose ``TensorProto`` is copied from the caller's model when first
    exported; reading the values needs no copy."""

    def __init__(self, values: LazyValues) -> None:  # noqa: super().__init__ would read the tensor
        self._source, self._own = values.tensor, None
        self.shape, self.dtype, self.nbytes = values.shape, values.dtype, values.nbytes

    @property
    def tensor(self) -> onnx.TensorProto:
        if self._own is None:
            self._own = _copy(self._source)
        return self._own

    @tensor.setter
    def tensor(self, value: onnx.TensorProto) -> None:
        self._source, self._own = value, value

    def load(self) -> np.ndarray:  # reading needs no copy of the proto
        return np.array(onnx.numpy_helper.to_array(self._own if self._own is not None else self._source))


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _graphs(graph: gs.Graph, functions: bool = True):
    """``graph``, its local functions and every subgraph, recursively."""
    yield graph
    if functions:  # a gs.Function's ``functions`` are its model's: walked once, from the top
        for function in graph.functions:
            yield from _graphs(function, functions=False)
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _graphs(value, functions=False)


def _gs_can_export(tensor: gs.Tensor) -> bool:
    """Whether onnx-graphsurgeon can write this tensor's value info itself."""
    if isinstance(tensor, gs.Constant) or tensor.dtype is None:
        return True
    kind = getattr(tensor, "type", "tensor_type")
    if kind not in ("tensor_type", "sequence_type"):
        return False
    dtype = tensor.dtype
    if isinstance(dtype, int):
        return dtype != onnx.TensorProto.UNDEFINED
    return isinstance(dtype, (np.dtype, type))


def _export(graph: gs.Graph) -> onnx.ModelProto:
    """``gs.export_onnx`` without its side effects, and with the types it cannot write.

    onnx-graphsurgeon writes the name of a lazily loaded constant into its source
    ``TensorProto`` (the caller's model when a ``ModelProto`` was loaded): names are
    put back (unnamed ones already read a private copy, see :func:`_complete_import`). Values of optional, map or sequence type are exported untyped, then given
    their declared types back.
    """
    hidden, names = [], []
    for g in _graphs(graph):
        declared = g.__dict__.get(_TYPES_KEY, {})
        tensors = list(g.tensors().values())
        for node in g.nodes:
            tensors.extend(v for v in node.attrs.values() if isinstance(v, gs.Constant))
        for tensor in tensors:
            if isinstance(tensor, gs.Constant):
                values = tensor._values
                if type(values) is LazyValues and isinstance(values.tensor, onnx.TensorProto):
                    proto = values.tensor
                    names.append((proto, proto.name if proto.HasField("name") else None))
            elif tensor.name in declared or not _gs_can_export(tensor):
                hidden.append((tensor, tensor.dtype, tensor.shape))
                tensor.dtype, tensor.shape = None, None
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, dtype, shape in hidden:
            tensor.dtype, tensor.shape = dtype, shape
        for proto, name in names:
            if name is None:
                proto.ClearField("name")
            else:
                proto.name = name
    _restore_types(graph, model.graph)
    return model


def _restore_types(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    declared = graph.__dict__.get(_TYPES_KEY)
    if declared:
        for vi in (*proto.input, *proto.output):
            if vi.name in declared:
                vi.type.CopyFrom(declared[vi.name])
        io = {vi.name for vi in (*proto.input, *proto.output)}
        present = set(graph.tensors())
        kept = [vi for vi in proto.value_info if vi.name not in declared]
        kept.extend(onnx.helper.make_value_info(name, declared[name]) for name in declared
                    if name in present and name not in io)
        del proto.value_info[:]
        proto.value_info.extend(kept)
    for node, node_proto in zip(graph.nodes, proto.node):
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                attr = next(a for a in node_proto.attribute if a.name == key)
                _restore_types(value, attr.g)


def to_model_proto(graph: gs.Graph, shell: onnx.ModelProto) -> onnx.ModelProto:
    """Export the graph and restore what onnx-graphsurgeon drops (metadata, docs, opsets).

    Initializers memory-mapped from the input model file are written inline, as they were.
    """
    model = _export(graph)
    own = {str(t._values.path) for t in graph.tensors().values()
           if isinstance(t, gs.Constant) and isinstance(t._values, FileSliceValues)}
    if own:
        _inline_file_slices(model.graph.initializer, own)
    for field in _MODEL_FIELDS_GS_DROPS:
        setattr(model, field, getattr(shell, field))
    del model.metadata_props[:]
    model.metadata_props.extend(shell.metadata_props)
    versions = {o.domain: o.version for o in shell.opset_import}
    versions.update({o.domain: o.version for o in model.opset_import if o.domain not in versions})
    versions[""] = graph.opset
    versions.pop("ai.onnx", None)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    if 0 < model.ir_version < 4:
        _list_initializers_as_inputs(model.graph)
    inputs = {i.name for i in model.graph.input}
    model.graph.initializer.extend(t for t in shell.graph.initializer if t.name in inputs)
    return model


def _list_initializers_as_inputs(graph: onnx.GraphProto) -> None:
    """IR < 4 requires every initializer to be a graph input too; onnx-graphsurgeon drops
    those inputs on import, so list them again (after the real inputs)."""
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            listed.add(t.name)


class _StubValues(LazyValues):
    """Stands in for a large constant during a weightless export: dims and type only."""

    def __init__(self, original: LazyValues | np.ndarray, name: str) -> None:
        dtype = onnx.helper.np_dtype_to_tensor_dtype(original.dtype) if isinstance(original, np.ndarray) \
            else original.tensor.data_type
        stub = onnx.TensorProto(name=name, dims=original.shape, data_type=dtype)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=WEIGHTLESS_PLACEHOLDER)
        super().__init__(stub)


WEIGHTLESS_PLACEHOLDER = "weightless.bin"
# Constants at or below this size keep their bytes in a weightless export, so shape
# inference can still fold shape arithmetic.
WEIGHTLESS_INLINE_MAX_BYTES = 1024


def export_weightless(graph: gs.Graph, shell: onnx.ModelProto) -> onnx.ModelProto:
    """Export with large constants replaced by external stubs: cheap for checks and inference.

    The stubs point at ``WEIGHTLESS_PLACEHOLDER``; checkers need an (empty) file of that
    name beside the model.
    """
    return _export_stubbed(graph, shell)[0]


def _export_stubbed(graph: gs.Graph, shell: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, gs.Constant]]:
    """:func:`export_weightless`, and the constants (by name) its stubs stand for."""
    swapped = []
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor._values is not None:
            values = tensor._values
            if _values_nbytes(values) > WEIGHTLESS_INLINE_MAX_BYTES:
                swapped.append((tensor, values))
                tensor._values = _StubValues(values, tensor.name)
    try:
        model = to_model_proto(graph, shell)
    finally:
        for tensor, values in swapped:
            tensor._values = values
    return model, {tensor.name: tensor for tensor, _ in swapped}


def _values_nbytes(values: LazyValues | np.ndarray) -> int:
    return values.nbytes if isinstance(values, (LazyValues, np.ndarray)) else 0


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
    data_path = path.with_name(path.name + ".data")
    sources = {ExternalDataInfo(t).location for t in model.graph.initializer
               if onnx.external_data_helper.uses_external_data(t)}
    if str(data_path.resolve()) in sources:
        raise InputError(f"{data_path}: is the input model's own external data file; choose another output path")
    atomic_write(data_path, lambda f: _write_tensors_external(model, f, data_path.name))
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return [path, data_path]


def save_graph(graph: gs.Graph, shell: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None) -> list[Path]:
    """Write the graph as :func:`save_model` would write ``to_model_proto(graph, shell)``,
    streaming each large weight from where it lives (an array, or a memory map of the
    input file) into the output: the whole model is never built in memory.

    The model is exported weightless and serialized without its initializers; they follow
    as a second ``graph`` field holding only ``initializer`` entries, each written as its
    header fields then its ``raw_data`` (protobuf merges repeated fields of a message, so
    readers see one graph with every initializer, in order). A model that needs external
    data (``external_data``, or weights over ``EXTERNAL_DATA_THRESHOLD``) is saved by
    :func:`save_model`.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: output folder {path.parent} does not exist")
    model, originals = _export_stubbed(graph, shell)
    sources = {str(t._values.path) for t in originals.values() if isinstance(t._values, MappedValues)}
    if str(path.resolve()) in sources:
        raise InputError(f"{path}: the model's weights are read from this file; choose another output path")
    tensors = [_tensor_record(t, originals) for t in model.graph.initializer]
    weights = sum(len(header) + length for header, _, length in tensors)
    if external_data or (external_data is None and weights > EXTERNAL_DATA_THRESHOLD):
        del model, tensors
        return save_model(to_model_proto(graph, shell), path, external_data=True)
    del model.graph.initializer[:]
    head = model.SerializeToString()
    del model
    records = []
    for header, data, length in tensors:
        size = len(header) + len(_RAW_DATA_KEY) + len(_varint(length)) + length if data is not None else len(header)
        records.append((_key(_GRAPH_INITIALIZER, _LEN) + _varint(size), header, data, length))
    body = sum(len(prefix) + len(header) + (len(_RAW_DATA_KEY) + len(_varint(length)) + length if data is not None else 0)
               for prefix, header, data, length in records)
    if len(head) + body > PROTOBUF_LIMIT:
        raise InputError(f"{path}: the model is over 2 GB, too large for one protobuf file; "
                         "save it with external data (--external-data)")

    def write(out: BinaryIO) -> None:
        out.write(head)
        if not records:
            return
        out.write(_key(_MODEL_GRAPH, _LEN) + _varint(body))
        for prefix, header, data, length in records:
            out.write(prefix)
            out.write(header)
            if data is not None:
                out.write(_RAW_DATA_KEY + _varint(length))
                data(out)

    atomic_write(path, write)
    return [path]


_RAW_DATA_KEY = _key(_TENSOR_RAW_DATA, _LEN)


def _tensor_record(proto: onnx.TensorProto, originals: dict[str, gs.Constant]):
    """(serialized fields, writer of the raw_data bytes or None, their length) of one
    initializer of a stubbed export: the stub's real values, or the proto itself."""
    tensor = originals.get(proto.name)
    if tensor is None or ExternalDataInfo(proto).location != WEIGHTLESS_PLACEHOLDER:
        return proto.SerializeToString(), None, 0
    values = tensor._values
    if isinstance(values, MappedValues):
        header = _copy(values.tensor)
        del header.external_data[:]
        header.ClearField("data_location")
        header.name = tensor.name
        return header.SerializeToString(), values.copy_to, values.length
    if isinstance(values, np.ndarray) and values.dtype.kind in "biufc" and tensor.data_location is None \
            and getattr(tensor, "export_dtype", values.dtype) == values.dtype:
        array = np.require(values, requirements="C")
        header = onnx.TensorProto(name=tensor.name, dims=array.shape,
                                  data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        data = memoryview(array.reshape(-1).view(np.uint8))
        return header.SerializeToString(), lambda out: out.write(data), data.nbytes
    # Anything else (protos held as they are, converted dtypes): as onnx-graphsurgeon writes it.
    if isinstance(values, LazyValues):
        exported = values.tensor
        if exported.name != tensor.name:
            exported = _copy(exported)
            exported.name = tensor.name
    else:
        exported = OnnxExporter.export_tensor_proto(tensor)
    return exported.SerializeToString(), None, 0


def _write_tensors_external(model: onnx.ModelProto, out: BinaryIO, location: str) -> None:
    for t in model.graph.initializer:
        nbytes = _tensor_nbytes(t)
        if nbytes < EXTERNAL_TENSOR_MIN_BYTES and not onnx.external_data_helper.uses_external_data(t):
            continue
        pad = -out.tell() % 4096  # page-aligned, so readers can memory-map each tensor
        out.write(b"\0" * pad)
        offset = out.tell()
        if onnx.external_data_helper.uses_external_data(t):
            MappedValues(t, Path(ExternalDataInfo(t).location)).copy_to(out)
        else:
            if not t.HasField("raw_data"):
                t.raw_data = onnx.numpy_helper.to_array(t).tobytes()
            out.write(t.raw_data)
        length = out.tell() - offset
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "string_data"):
            t.ClearField(field)
        _set_location(t, location, offset, length)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temp file beside ``path``, then rename it over ``path``.

    A failure leaves ``path`` as it was. The file gets the usual permissions (umask),
    not the private ones of a temp file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inline_copy(proto: onnx.TensorProto, data: bytes) -> onnx.TensorProto:
    copy = onnx.TensorProto(name=proto.name, dims=proto.dims, data_type=proto.data_type)
    copy.raw_data = data
    return copy
