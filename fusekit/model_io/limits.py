"""Limits on untrusted models: nesting that would exhaust the stack, or text that is not
UTF-8, is refused up front.

Subgraphs (If/Loop/Scan bodies) nested deeper than :data:`MAX_NESTING` or more than
:data:`MAX_SUBGRAPHS` of them in all (a small file whose nested If branches repeat one
body holds exponentially many graphs to import), function calls
chained deeper than that, and functions that call themselves (directly or through
others) are an :class:`~fusekit.errors.InputError` naming the graph or function, before
onnx-graphsurgeon's recursive import or any pass sees the model. Walked without
recursion, so the check itself cannot overflow the stack.
"""

from __future__ import annotations

import onnx

from fusekit.errors import InputError

MAX_NESTING = 16
MAX_SUBGRAPHS = 4096  # subgraph bodies in all (both branches of 16 nested Ifs are 2**16: each is walked)


def check_nesting(model: onnx.ModelProto, where: str) -> None:
    """Refuse subgraphs nested or functions called deeper than :data:`MAX_NESTING`, or in a cycle."""
    bodies = [(model.graph.node, 0, f"graph {model.graph.name!r}")]
    bodies += [(f.node, 0, f"function {f.name!r}") for f in model.functions]
    seen = 0
    while bodies:
        nodes, depth, owner = bodies.pop()
        for node in nodes:
            for attr in node.attribute:
                graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for g in graphs:
                    if depth + 1 > MAX_NESTING:
                        raise InputError(f"{where}: subgraphs of {owner} nest deeper than {MAX_NESTING} levels "
                                         f"(at node {node.name or node.op_type!r}); refusing the model")
                    seen += 1
                    if seen > MAX_SUBGRAPHS:
                        raise InputError(f"{where}: more than {MAX_SUBGRAPHS} subgraphs (nested If/Loop/Scan "
                                         "bodies, counted as imported); refusing the model")
                    bodies.append((g.node, depth + 1, owner))
    _check_calls(model, where)


_NOT_VALUES = frozenset({"name", "type", "doc_string", "ref_attr_name"})


def check_text(model: onnx.ModelProto, where: str) -> None:
    """Refuse a model with a string field that is not UTF-8 (protobuf parses it and hands it
    back as bytes, which fails wherever it is used), or a list attribute with no values
    (onnx-graphsurgeon cannot write it back: its type is lost). Walks every message once,
    without reading tensor bytes."""
    pending: list = [model]
    while pending:
        message = pending.pop()
        if isinstance(message, onnx.AttributeProto) and not message.ref_attr_name and not (
                {fd.name for fd, _ in message.ListFields()} - _NOT_VALUES):
            raise InputError(f"{where}: attribute {message.name!r} has no value (an empty list or none), which "
                             "fusekit cannot write back with its type; remove it or give it values")
        if isinstance(message, onnx.TensorProto):
            _check_data_size(message, where)
            fields = [(f, getattr(message, f)) for f in ("name", "doc_string")]
            fields += [("external_data", [*message.external_data])]
            fields = [(name, v) for name, v in fields if v]
        else:
            fields = [(fd.name, value) for fd, value in message.ListFields()
                      if fd.type in (fd.TYPE_MESSAGE, fd.TYPE_STRING)]
        for name, value in fields:
            values = [value] if isinstance(value, (str, bytes)) or hasattr(value, "ListFields") else list(value)
            for v in values:
                if isinstance(v, bytes):
                    raise InputError(f"{where}: not a valid ONNX model (field {name!r} holds text that is not "
                                     f"UTF-8: {v[:40]!r})")
                if hasattr(v, "ListFields"):
                    pending.append(v)


def _check_data_size(tensor: onnx.TensorProto, where: str) -> None:
    """Refuse a tensor whose raw bytes (inline, or the length of its external data) do not fill
    its shape: reading it would fail inside a pass. Inline raw_data is small here: a model
    file's large initializers are mapped, with their length, before this check."""
    if tensor.data_type in _UNSIZED or not tensor.data_type:
        return
    if tensor.HasField("raw_data"):
        held = len(tensor.raw_data)
    else:
        length = next((e.value for e in tensor.external_data if e.key == "length"), None)
        if length is None or not length.isdigit():
            return  # no data (a weightless tensor), typed fields, or a length the loader works out
        held = int(length)
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError):
        raise InputError(f"{where}: tensor {tensor.name!r} has an unknown data type {tensor.data_type}") from None
    needed = count * itemsize
    if held != needed:
        raise InputError(f"{where}: tensor {tensor.name!r} holds {held} bytes of data, but its shape "
                         f"{list(tensor.dims)} of {onnx.TensorProto.DataType.Name(tensor.data_type)} needs {needed}")


# Types whose bytes are not one fixed size per element (strings; packed 4-bit and 2-bit types).
_UNSIZED = frozenset(getattr(onnx.TensorProto, name) for name in
                     ("STRING", "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(onnx.TensorProto, name))


def _check_calls(model: onnx.ModelProto, where: str) -> None:
    functions = {(f.domain, f.name): f for f in model.functions}
    calls = {key: sorted({(n.domain, n.op_type) for n in _all_nodes(f.node)} & functions.keys())
             for key, f in functions.items()}
    depth: dict[tuple[str, str], int] = {}
    for root in functions:
        if root in depth:
            continue
        stack = [(root, iter(calls[root]))]
        on_path = {root}
        while stack:
            key, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                stack.pop()
                on_path.discard(key)
                depth[key] = 1 + max((depth[c] for c in calls[key]), default=0)
                if depth[key] > MAX_NESTING:
                    raise InputError(f"{where}: function {key[1]!r} calls functions {depth[key]} deep "
                                     f"(more than {MAX_NESTING}); refusing the model")
                continue
            if nxt in on_path:
                raise InputError(f"{where}: function {nxt[1]!r} calls itself (through {key[1]!r}); "
                                 "refusing the model")
            if nxt not in depth:
                on_path.add(nxt)
                stack.append((nxt, iter(calls[nxt])))


def _all_nodes(nodes):
    """Nodes of a body and of every subgraph in it (iteratively)."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                pending.extend(g.node)
