"""Export the graph to a ModelProto, restoring what onnx-graphsurgeon drops, and the
weightless export used for checks and shape inference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit.graph_edit import held_values, notes
from fusekit.model_io.load import _MODEL_FIELDS_GS_DROPS, _inline_file_slices
from fusekit.model_io.values import (
    WEIGHTLESS_INLINE_MAX_BYTES,
    FileSliceValues,
    _StubValues,
    values_nbytes,
)


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


def _export(graph: gs.Graph) -> tuple[onnx.ModelProto, set[str]]:
    """``gs.export_onnx`` without its side effects, and with the types it cannot write;
    and the files the top graph's memory-mapped own initializers (FileSliceValues) are in.

    onnx-graphsurgeon writes the name of a lazily loaded constant into its source
    ``TensorProto`` (the caller's model when a ``ModelProto`` was loaded): names are
    put back (unnamed ones already read a private copy, see :func:`_complete_import`). Values of optional, map or sequence type are exported untyped, then given
    their declared types back.
    """
    hidden, names, own = [], [], set()
    for g in _graphs(graph):
        declared = notes(g).declared_types
        tensors = list(g.tensors().values())
        if g is graph:
            own = {str(held_values(t).path) for t in tensors
                   if isinstance(t, gs.Constant) and isinstance(held_values(t), FileSliceValues)}
        for node in g.nodes:
            tensors.extend(v for v in node.attrs.values() if isinstance(v, gs.Constant))
        for tensor in tensors:
            if isinstance(tensor, gs.Constant):
                values = held_values(tensor)
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
    return model, own


def _restore_types(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    declared = notes(graph).declared_types
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
    model, own = _export(graph)
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


def export_weightless(graph: gs.Graph, shell: onnx.ModelProto) -> onnx.ModelProto:
    """Export with large constants replaced by external stubs: cheap for checks and inference.

    The stubs point at ``WEIGHTLESS_PLACEHOLDER``; checkers need an (empty) file of that
    name beside the model.
    """
    return _export_stubbed(graph, shell)[0]


def _export_stubbed(graph: gs.Graph, shell: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, gs.Constant]]:
    """:func:`export_weightless`, and the constants (by name) its stubs stand for."""
    swapped, inlined = [], []
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and held_values(tensor) is not None:
            values = held_values(tensor)
            if values_nbytes(values) > WEIGHTLESS_INLINE_MAX_BYTES:
                swapped.append((tensor, values))
                tensor.values = _StubValues(values, tensor.name)
            elif isinstance(values, LazyValues) and uses_external_data(values.tensor):
                # a small weight read from an external file: inline (its location is absolute
                # once loaded, which onnx's checker refuses), so shape inference still sees it
                inlined.append((tensor, values, tensor.data_location))
                tensor.values, tensor.data_location = values.load(), None
    try:
        model = to_model_proto(graph, shell)
    finally:
        for tensor, values in swapped:
            tensor.values = values
        for tensor, values, location in inlined:
            tensor.values, tensor.data_location = values, location
    return model, {tensor.name: tensor for tensor, _ in swapped}


