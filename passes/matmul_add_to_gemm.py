"""Fuse a 2-D MatMul and its bias Add into one Gemm; absorb a transposed constant weight.

Rewrites, for A of rank 2 (M x K) and a constant weight W of rank 2:

- ``Add(MatMul(A, W), c)`` (either Add operand order) -> ``Gemm(A, W, c)``, when the
  constant bias c broadcasts to [M, N] without growing it (shape [], [1], [N], [1, N],
  [M, 1], [M, N] with M static): Gemm computes A*W + c, the same sum in another order;
- ``MatMul(A, Transpose(W))`` (perm [1, 0]) -> ``Gemm(A, W, transB=1)``, with or without a
  following bias Add.

Weights are never copied or re-laid: TensorRT treats ``transB`` as an operand flag, so a
[K, N] weight stays as it is with ``transB=0`` and a Transpose of a [N, K] constant
(``nn.Linear`` storage) is read as stored with ``transB=1`` (a weight shared with other
nodes stays shared).

Must not: rewrite when A's rank is not known to be 2 (Gemm is strictly 2-D: a batched
MatMul stays), when the weight is not a rank-2 constant, when the element type is not a
float type Gemm takes (float16/float32/float64, bfloat16 from opset 13), when the MatMul
result is a graph output or read by anything but the Add, when the bias is not constant
or would broadcast the result to a larger shape, for a MatMul with a plain constant weight
and no bias Add (Gemm would gain nothing), or before opset 9 (older Gemm broadcast rules).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, live_consumers, onnx_type, remove, sole_use_problem, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._channel_affine import matrix_weight

FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


def _bias(add: gs.Node, product: gs.Tensor, m, n: int) -> gs.Tensor | Decline:
    other = add.inputs[1] if add.inputs[0] is product else add.inputs[0]
    if other is product:
        return Decline("the Add adds the product to itself")
    value = constant_array(other)
    if value is None:
        return Decline("the Add's other operand is not a constant bias")
    shape = np.shape(value)
    if len(shape) > 2 or (shape and shape[-1] not in (1, n)) or \
            (len(shape) == 2 and shape[0] != 1 and not (isinstance(m, int) and shape[0] == m)):
        return Decline(f"bias of shape {list(shape)} broadcasts beyond the [M, N] = [{m}, {n}] product")
    return other


class MatMulAddToGemmPass(NodeRewritePass):
    """Fuse a 2-D MatMul with constant weights and its bias Add into Gemm."""

    name = "matmul-add-to-gemm"
    stage = Stage.FUSION
    priority = 70
    ops = frozenset({"MatMul"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Match | Decline:
        if graph.opset < 9:
            return Decline(f"opset {graph.opset} < 9")
        a, product = node.inputs[0], node.outputs[0]
        if a.shape is None:
            return Decline("A's rank is unknown")
        if len(a.shape) != 2:
            return Decline(f"A has rank {len(a.shape)}; Gemm is 2-D")
        dtype = onnx_type(a.dtype)
        allowed = FLOATS | ({onnx.TensorProto.BFLOAT16} if graph.opset >= 13 else set())
        if dtype not in allowed:
            return Decline("A's element type is unknown" if dtype is None
                           else f"element type {type_name(dtype)} is not one Gemm takes")
        weight = matrix_weight(node.inputs[1], "B is not a constant (or a Transpose of a rank-2 constant)")
        if isinstance(weight, str):
            return Decline(weight)
        stored, transposed, shape = weight
        trans_b = int(transposed)
        n = shape[0 if trans_b else 1]
        readers = live_consumers(product)
        add = readers[0] if len(readers) == 1 and readers[0].op == "Add" else None
        problem = sole_use_problem(graph, product, readers[0]) if readers else "its result is unused"
        bias = None
        if add is not None and problem is None:
            bias = _bias(add, product, a.shape[0], n)
            if not isinstance(bias, Decline):
                layout = ", weight used as stored with transB=1" if trans_b else ""
                return Match(f"MatMul + Add fused into Gemm{layout}", (stored, trans_b, add, bias))
        if trans_b:
            return Match("MatMul with a transposed constant weight written as Gemm(transB=1)",
                         (stored, trans_b, None, None))
        if isinstance(bias, Decline):
            return bias
        if problem:
            return Decline(f"no bias Add can be fused: {problem}")
        return Decline(f"no bias Add follows (its reader is {readers[0].op} {readers[0].name!r})")

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        stored, trans_b, add, bias = match.data
        a = node.inputs[0]
        inputs = [a, stored] + ([bias] if bias is not None else [])
        node.op = "Gemm"
        node.attrs.clear()
        if trans_b:
            node.attrs["transB"] = 1
        node.inputs.clear()
        node.inputs.extend(inputs)
        if add is not None:
            out = add.outputs[0]
            remove(add)
            node.outputs.clear()
            node.outputs.append(out)
