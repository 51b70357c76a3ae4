"""Write the reshape before a Gemm as ``Flatten(axis=1)``, the form TensorRT expects.

TensorRT's ONNX parser turns ``Flatten(axis=1) -> Gemm`` on a rank-4 input into one
fully-connected pattern; a Reshape computed from the input's shape (the raw export of
``x.view(x.size(0), -1)``) is a shape subgraph plus a Shuffle instead. Rewrites, when
every consumer reads the result as Gemm's input A:

- ``Reshape(x, [0, -1])`` (``allowzero=0``) -> ``Flatten(x, axis=1)``: both give
  [x0, x1*...*xk] for any x of rank >= 1;
- ``Reshape(x, [d, -1])``, ``[d, e]``, ``[0, e]`` or ``[-1, e]`` -> the same, when d equals
  x's static dim 0 and e the static product of its other dims (then they say [x0, -1]);
- ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))`` (also with a 1-D index and
  no Unsqueeze) -> the same: the target is x's own dim 0 then -1, at run time;
- ``Flatten(x, axis=k)`` with k = 1 - rank(x) (a negative spelling of 1) -> axis 1.

Must not: rewrite when a consumer is not Gemm (or reads it as B or C), when the target's
first entry may differ from x's dim 0 (a static number against a dynamic or different
dim), when ``allowzero=1`` makes a 0 mean an empty dim, or when the rank of x is unknown
(needed for the static checks).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, live_consumers, producer
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage


def _is_int(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def _is_dim0_of(tensor: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether ``tensor`` (1-D, one element) is computed as x's dim 0 from ``Shape(x)``."""
    node = producer(tensor)
    if node is None:
        return False
    if node.op == "Unsqueeze":
        axes = node.attrs.get("axes") if len(node.inputs) < 2 else constant_array(node.inputs[1])
        if axes is None or [int(a) for a in np.ravel(axes)] != [0]:
            return False
        scalar = True
        node = producer(node.inputs[0])
        if node is None:
            return False
    else:
        scalar = False
    if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0:
        return False
    index = constant_array(node.inputs[1])
    if index is None or np.ndim(index) != (0 if scalar else 1) or np.ravel(index).tolist() != [0]:
        return False
    shape_node = producer(node.inputs[0])
    return (shape_node is not None and shape_node.op == "Shape" and shape_node.inputs[0] is x
            and int(shape_node.attrs.get("start", 0)) == 0 and shape_node.attrs.get("end") is None)


def _reshape_verdict(node: gs.Node) -> Match[None] | Decline:
    if len(node.inputs) < 2:
        return Decline("the shape is an attribute (opset < 5)")
    x, target_tensor = node.inputs[0], node.inputs[1]
    if node.attrs.get("allowzero", 0):
        return Decline("allowzero=1: a 0 in the target means an empty dim")
    target = constant_array(target_tensor)
    if target is None:
        concat = producer(target_tensor)
        if concat is None or concat.op != "Concat" or len(concat.inputs) != 2:
            return Decline("target shape is neither constant nor Concat(dim 0 of the input, -1)")
        tail = constant_array(concat.inputs[1])
        if tail is None or np.ravel(tail).tolist() != [-1] or not _is_dim0_of(concat.inputs[0], x):
            return Decline("target shape is neither constant nor Concat(dim 0 of the input, -1)")
        return Match("Reshape(x, [dim 0 of x, -1]) before Gemm written as Flatten(axis=1)")
    target = [int(d) for d in np.ravel(target)]
    if len(target) != 2:
        return Decline(f"target {target} is not 2-D")
    if target == [0, -1]:
        return Match("Reshape(x, [0, -1]) before Gemm written as Flatten(axis=1)")
    shape = x.shape
    if shape is None or len(shape) < 1:
        return Decline("input shape is unknown")
    rest = shape[1:]
    rest_size = math.prod(int(d) for d in rest) if all(_is_int(d) for d in rest) else None
    rows_ok = target[0] == 0 or (_is_int(shape[0]) and target[0] == shape[0]) or \
        (target[0] == -1 and rest_size is not None and target[1] == rest_size and rest_size > 0)
    cols_ok = target[1] == -1 or (rest_size is not None and target[1] == rest_size)
    if rows_ok and cols_ok and not (target[0] == -1 and target[1] == -1):
        return Match(f"Reshape(x, {target}) before Gemm written as Flatten(axis=1): x is {list(shape)}")
    return Decline(f"target {target} may not be [dim 0, rest] of input {list(shape)}")


class FlattenBeforeGemmPass(NodeRewritePass):
    """Turn a Reshape to [dim 0, -1] feeding Gemm into Flatten(axis=1); normalise Flatten's axis."""

    name = "flatten-before-gemm"
    stage = Stage.FUSION
    priority = 80
    ops = frozenset({"Reshape", "Flatten"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match[None] | Decline:
        out = node.outputs[0]
        readers = live_consumers(out)
        if not readers or any(n.op != "Gemm" or n.inputs[0] is not out or any(t is out for t in n.inputs[1:])
                              for n in readers):
            return Decline("its result is not read only as Gemm's input A")
        if node.op == "Reshape":
            return _reshape_verdict(node)
        axis = int(node.attrs.get("axis", 1))
        if axis == 1:
            return Decline("already Flatten(axis=1)")
        shape = node.inputs[0].shape
        if axis < 0 and shape is not None and axis + len(shape) == 1:
            return Match(f"Flatten axis {axis} written as axis 1")
        return Decline(f"Flatten axis {axis} is not axis 1 (input rank {'unknown' if shape is None else len(shape)})")

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match[None], ctx: PassContext) -> None:
        if node.op == "Reshape":
            node.op = "Flatten"
            node.inputs.pop()
        node.attrs.clear()
        node.attrs["axis"] = 1
