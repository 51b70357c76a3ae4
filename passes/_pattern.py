"""Helpers for passes that match a small pattern of nodes and replace it: find producers and
consumers, read scalar constants, check that no intermediate escapes, build the new nodes.

Not a pass. Everything here reads the graph; only :func:`replace_pattern` changes it, and
only from a pass's ``rewrite``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import (constant_array, fresh_name, is_graph_io, live_consumers, onnx_type, producer, remove,
                                replace_uses)
from fusekit.onnx_nodes import is_default_domain

FLOAT_ENUMS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def op_of(tensor: gs.Tensor | None, *ops: str) -> gs.Node | None:
    """The producer of ``tensor`` if it is a live default-domain node of one of ``ops``."""
    node = producer(tensor) if tensor is not None else None
    if node is None or node.op not in ops or not is_default_domain(node) or not node.outputs:
        return None
    return node


def only_consumer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    """The single live consumer of ``tensor`` if it is a default-domain node of one of ``ops``."""
    users = live_consumers(tensor)
    if len(users) != 1 or users[0].op not in ops or not is_default_domain(users[0]):
        return None
    return users[0]


def consumer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    """The one live default-domain consumer of ``tensor`` among those of ``ops`` (readers of
    other ops are ignored here: :func:`escaping` reports them), or None if none or several."""
    found = {id(u): u for u in live_consumers(tensor) if u.op in ops and is_default_domain(u)}
    return next(iter(found.values())) if len(found) == 1 else None


def rank_of(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def scalar_operand(tensor: gs.Tensor | None, rank: int | None, kinds: str = "f") -> float | None:
    """The value of a one-element constant (of a NumPy kind in ``kinds``) that does not
    broadcast a tensor of ``rank`` to a higher rank (unknown rank: only a 0-d constant
    qualifies); else None."""
    value = constant_array(tensor)
    if value is None or value.size != 1 or value.dtype.kind not in kinds:
        return None
    if value.ndim > (0 if rank is None else rank):
        return None
    return float(np.asarray(value, dtype=np.float64).reshape(()))


def close(value: float | None, exact: float, dtype=np.float32) -> bool:
    """``value`` is ``exact`` up to the rounding of a float32 (or of ``dtype``, if coarser)."""
    if value is None:
        return False
    rtol = max(float(np.finfo(np.float32).eps), float(np.finfo(np.dtype(dtype)).eps))
    return abs(value - exact) <= rtol * abs(exact)


def constant_operand(node: gs.Node, rank: int | None) -> tuple[int, float] | None:
    """For a binary node with exactly one scalar-constant operand: (index of the other
    operand, the constant's value)."""
    if len(node.inputs) != 2:
        return None
    values = [scalar_operand(t, rank) for t in node.inputs]
    if (values[0] is None) == (values[1] is None):
        return None
    return (1, values[0]) if values[0] is not None else (0, values[1])


def scale_of(node: gs.Node | None, rank: int | None) -> tuple[gs.Tensor, float] | None:
    """``Mul(a, c)``, ``Mul(c, a)`` or ``Div(a, c)`` with a scalar constant c: (a, factor)."""
    if node is None or node.op not in ("Mul", "Div"):
        return None
    found = constant_operand(node, rank)
    if found is None:
        return None
    index, value = found
    if node.op == "Mul":
        return node.inputs[index], value
    if index != 0 or value == 0:  # c / a is not a scaling of a
        return None
    return node.inputs[0], 1.0 / value


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a binary node reading ``tensor`` once: its other operand."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor and b is not tensor:
        return b
    if b is tensor and a is not tensor:
        return a
    return None


def escaping(graph: gs.Graph, nodes: Iterable[gs.Node], output: gs.Tensor) -> str | None:
    """Why the pattern ``nodes`` (computing ``output``) cannot be replaced as a whole: the
    name of an intermediate tensor read outside the pattern or that is a graph output."""
    members = {id(n) for n in nodes}
    for node in nodes:
        for t in node.outputs:
            if t is output:
                continue
            if is_graph_io(graph, t):
                return f"intermediate {t.name!r} is a graph output"
            outside = [c for c in live_consumers(t) if id(c) not in members]
            if outside:
                return f"intermediate {t.name!r} is also read by {outside[0].op} {outside[0].name!r}"
    return None


def float_type(tensor: gs.Tensor) -> int | None:
    """The tensor's element type as an ONNX enum if it is a float type, else None."""
    enum = onnx_type(tensor.dtype)
    return enum if enum in FLOAT_ENUMS else None


def np_dtype(tensor: gs.Tensor) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type(tensor.dtype)))


def replace_pattern(graph: gs.Graph, nodes: Iterable[gs.Node], output: gs.Tensor, new_nodes: list[gs.Node],
                    new_output: gs.Tensor) -> None:
    """Add ``new_nodes`` (computing ``new_output``), make ``output``'s readers read
    ``new_output`` (graph outputs keep their names) and detach the old ``nodes``."""
    graph.nodes.extend(new_nodes)
    if new_output.dtype is None:
        new_output.dtype = output.dtype
    if new_output.shape is None:
        new_output.shape = output.shape
    replace_uses(graph, output, new_output)
    for node in nodes:
        remove(node)


def variable(graph: gs.Graph, base: str, like: gs.Tensor | None = None) -> gs.Variable:
    return gs.Variable(fresh_name(graph, base), dtype=None if like is None else like.dtype,
                       shape=None if like is None else like.shape)


def node(graph: gs.Graph, op: str, base: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor],
         **attrs) -> gs.Node:
    return gs.Node(op, fresh_name(graph, base), attrs=attrs, inputs=inputs, outputs=outputs)
