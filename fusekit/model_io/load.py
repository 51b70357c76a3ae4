"""Load a model file or ModelProto into an editable graph without copying its weights.

The file is parsed with the bytes of its large initializers left out (found by walking
the protobuf wire format); those tensors, like external-data ones, are memory-mapped
on demand. External data paths must stay inside the model's folder (untrusted models).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.util.exception import OnnxGraphSurgeonException

from fusekit.errors import InputError
from fusekit.graph_edit import held_values, notes
from fusekit.model_io.limits import check_nesting, check_text
from fusekit.model_io.repair import repair_loaded
from fusekit.model_io.spill import WeightSpill
from fusekit.model_io.values import FileSliceValues, MappedValues, _CopyOnUseValues, _copy, _set_location
from fusekit.model_io.wire import _strip_model


_MODEL_FIELDS_GS_DROPS = ("doc_string", "domain", "model_version")


@dataclass
class LoadedModel:
    """An editable graph plus what onnx-graphsurgeon does not carry (the model's shell)."""

    graph: gs.Graph
    shell: onnx.ModelProto  # the source model without its graph: metadata, opsets, docs
    path: Path | None = None
    # Moves weights that passes compute to a scratch file when memory runs over the
    # model's size, and holds that file for as long as the graph lives.
    spill: WeightSpill = field(default_factory=WeightSpill)
    # Safe repairs made while loading: (what is wrong, what was done), see model_io.repair.
    repairs: list = field(default_factory=list)


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
    where = "<ModelProto>" if path is None else str(path)
    check_nesting(model, where)
    check_text(model, where)
    shell = _shell_of(model)
    try:
        graph = gs.import_onnx(model)
    except (ValueError, TypeError, KeyError, IndexError, OnnxGraphSurgeonException) as exc:  # a field it cannot read
        raise InputError(f"{where}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    _keep_overridable_inputs(model, graph, shell)
    _complete_import(model.graph, graph, caller_owned=path is None)
    _complete_functions(model, graph, caller_owned=path is None)
    if path is None:
        size = model.ByteSize()
    else:
        size = path.stat().st_size + _map_external_tensors(graph, path.parent, model_name=str(path))
        _inline_own_slices(shell.graph.initializer, path)
    repairs = repair_loaded(model, graph, str(path) if path is not None else "<ModelProto>")
    name_unnamed_nodes(graph)
    return LoadedModel(graph=graph, shell=shell, path=path, spill=WeightSpill(budget=size), repairs=repairs)


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
    for name in _MODEL_FIELDS_GS_DROPS:
        setattr(shell, name, getattr(model, name))
    shell.metadata_props.extend(model.metadata_props)
    shell.opset_import.extend(model.opset_import)
    return shell


def _map_external_tensors(graph: gs.Graph, base_dir: Path, model_name: str) -> int:
    """Swap each external-data initializer's lazy values for a memory map of its file;
    return the bytes mapped from files other than the model's."""
    base = base_dir.resolve()
    external = 0
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
        tensor.values = mapped
        if own:  # inline in the model: onnx-graphsurgeon would mark the values it reads as external
            tensor.data_location = None
        else:
            external += mapped.length
    return external


def resolve_external_path(proto: onnx.TensorProto, base: Path, model_name: str) -> Path:
    """The absolute file of an external tensor, refusing paths that leave the model's folder."""
    location = ExternalDataInfo(proto).location
    if not location:
        raise InputError(f"{model_name}: tensor {proto.name!r} has external data with no location")
    candidate = Path(location)
    if candidate.is_absolute():
        # The one absolute location fusekit writes itself: the model file (read_model_file's
        # memory-mapped initializers). Any other, from the file, could name any file.
        resolved = candidate.resolve()
        if resolved != Path(model_name).resolve():
            raise InputError(f"{model_name}: tensor {proto.name!r} has an absolute external data location "
                             f"({location!r}); refusing to read it")
    else:
        resolved = (base / candidate).resolve()
        if base not in resolved.parents:
            raise InputError(f"{model_name}: tensor {proto.name!r} points outside the model folder "
                             f"({location!r}); refusing to read it")
    if not resolved.is_file():
        raise InputError(f"{model_name}: external data file {location!r} of tensor {proto.name!r} is missing")
    return resolved


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
            notes(graph).declared_types = {name: _copy(t) for name, t in declared.items()}
    for node_proto, node in zip(proto.node, graph.nodes):
        for attr in node_proto.attribute:
            value = node.attrs.get(attr.name)
            if attr.name not in node.attrs and not attr.ref_attr_name and attr.type in _ATTRS_GS_SKIPS:
                node.attrs[attr.name] = onnx.helper.get_attribute_value(attr)
            elif attr.type == onnx.AttributeProto.GRAPH and isinstance(value, gs.Graph):
                _complete_import(attr.g, value, caller_owned)
            elif caller_owned and isinstance(value, gs.Constant) and type(held_values(value)) is LazyValues:
                value.values = _CopyOnUseValues(held_values(value))


def _complete_functions(model: onnx.ModelProto, graph: gs.Graph, caller_owned: bool) -> None:
    functions = {(f.domain, f.name): f for f in model.functions}
    for function in graph.functions:
        proto = functions.get((function.domain, function.name))
        if proto is not None:
            _complete_import(proto, function, caller_owned)


_ATTRS_GS_SKIPS = frozenset({
    onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS, onnx.AttributeProto.SPARSE_TENSOR,
    onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.TENSORS, onnx.AttributeProto.GRAPHS})
