"""Replacing a computed tensor with its value (fold-constants, fold-shapes). Not a pass."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import fresh_name
from fusekit.pass_infra import PassContext


def replace_with_constant(graph: gs.Graph, tensor: gs.Tensor, value: np.ndarray, outputs: set[int]) -> bool:
    """Make ``tensor`` (a node output) hold ``value`` as a constant; its node no longer
    computes it. A graph output stays a graph output, written by a ``Constant`` node of
    its name. ``outputs`` holds the ids of the graph outputs. Returns False, changing
    nothing, when that would add nodes (the node writes several graph outputs)."""
    node = tensor.inputs[0]
    if id(tensor) in outputs and sum(id(t) in outputs for t in node.outputs) > 1:
        return False  # one Constant node per graph output would add nodes
    _detach(graph, node, tensor)
    if id(tensor) in outputs:
        graph.nodes.append(gs.Node("Constant", name=fresh_name(graph, node.name),
                                   attrs={"value": gs.Constant(tensor.name, value)}, outputs=[tensor]))
    else:
        tensor.to_constant(np.require(value, requirements="C"))
    return True


def record_folded(ctx: PassContext, nodes, outputs: set[int]) -> None:
    """Record, for --trace, each of ``nodes`` left computing nothing anyone reads."""
    for node in nodes:
        if not any(t.outputs or id(t) in outputs for t in node.outputs):  # else it stays
            ctx.record(node, "folded into a constant")


def _detach(graph: gs.Graph, node: gs.Node, tensor: gs.Tensor) -> None:
    """Take ``tensor`` from ``node``; an unused placeholder keeps the other outputs' positions
    (a node still needed for its other outputs must not see them shift: Split, TopK...)."""
    index = next(i for i, t in enumerate(node.outputs) if t is tensor)
    node.outputs[index] = gs.Variable(fresh_name(graph, f"{tensor.name}_unused"), tensor.dtype, tensor.shape)
