"""Turn an inference BatchNormalization that nothing absorbs into a per-channel Mul and Add.

    BN(x) = x * s + t,  s = gamma / sqrt(var + epsilon),  t = beta - mean * s

with ``s`` and ``t`` computed in float64, cast once to x's type, and shaped ``(C, 1, ...)``
(rank(x) - 1 dims) so they broadcast over channel axis 1. TensorRT fuses the pair into
a scale layer and ``fold-scale-into-weights`` merges it with neighbouring scales, shifts
and linear ops.

Runs after ``fold-batchnorm`` and must not take a BN that pass folds (folding removes a
node; this adds one). Must not rewrite in training mode, with ``spatial=0``, with used
statistics outputs or non-constant parameters (see ``fold-batchnorm``), when the
input's rank or element type is unknown, or when ``s`` or ``t`` overflows that type, or ``s``
falls below its smallest normal (subnormals keep fewer bits). BN's output name is kept.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import fresh_name, onnx_type, remove, replace_uses, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._batchnorm import batchnorm_affine, fold_into_neighbour
from fusekit.passes._channel_affine import FLOAT_DTYPES, cast_once, exact_constant

Verdict = Match | Decline


class DecomposeBatchNormPass(NodeRewritePass):
    """Turn a BatchNormalization no linear op can absorb into a per-channel Mul and Add."""

    name = "decompose-batchnorm"
    stage = Stage.FUSION
    priority = 20
    ops = frozenset({"BatchNormalization"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Verdict:
        affine = batchnorm_affine(graph, node)
        if isinstance(affine, Decline):
            return affine
        folded = fold_into_neighbour(graph, node, affine)
        if isinstance(folded, Match):
            return Decline(f"fold-batchnorm removes it: {folded.message}")
        x, y = node.inputs[0], node.outputs[0]
        shape = x.shape if x.shape is not None else y.shape
        if shape is None:
            return Decline("its input rank is unknown")
        if len(shape) < 2:
            return Decline(f"its input has rank {len(shape)}, no channel axis")
        channels = shape[1]
        if isinstance(channels, (int, np.integer)) and channels >= 0 and channels != affine[0].size:
            return Decline(f"its input has {channels} channels, its parameters {affine[0].size}")
        elem = onnx_type(x.dtype if x.dtype is not None else y.dtype)
        if elem is None:
            return Decline("its input type is unknown")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        if dtype not in FLOAT_DTYPES:
            return Decline(f"its input is {type_name(elem)}, not float16/float32/float64")
        for label, value in zip(("scale", "shift"), affine):
            if isinstance(problem := cast_once(value, dtype, () if label == "scale" else None), str):
                return Decline(f"its {label} would {problem}")
        return Match("BatchNormalization decomposed into a per-channel Mul and Add", (affine, len(shape), dtype))

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        (scale, shift), rank, dtype = match.data
        x, y = node.inputs[0], node.outputs[0]
        shape = (-1,) + (1,) * (rank - 2)
        base = node.name or "BatchNormalization"
        scaled = gs.Variable(fresh_name(graph, f"{y.name}_scaled"), dtype=y.dtype, shape=y.shape)
        out = gs.Variable(fresh_name(graph, f"{y.name}_shifted"), dtype=y.dtype, shape=y.shape)
        s = exact_constant(graph, f"{base}_scale", scale.reshape(shape), dtype)
        t = exact_constant(graph, f"{base}_shift", shift.reshape(shape), dtype)
        graph.nodes.append(gs.Node("Mul", name=fresh_name(graph, f"{base}_mul"), inputs=[x, s], outputs=[scaled]))
        graph.nodes.append(gs.Node("Add", name=fresh_name(graph, f"{base}_add"), inputs=[scaled, t], outputs=[out]))
        replace_uses(graph, y, out)
        remove(node)
