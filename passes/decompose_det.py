"""Decompose ``Det`` of 1x1, 2x2 and 3x3 matrices into elementwise arithmetic.

TensorRT cannot parse Det. For a static matrix size n <= 3 the determinant is a fixed
polynomial of the entries, read with ``Gather`` (a scalar index drops the axis, so each
entry has the batch shape [...] of the result):

- n = 1: a
- n = 2: a d - b c
- n = 3: a (e i - f h) - b (d i - f g) + c (d h - e g)   (cofactors of the first row)

The same value as onnxruntime's LU-based kernel up to float rounding.

Must not: rewrite a larger or unknown matrix size, or a non-float input.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import make_constant
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import float_type, node, replace_pattern, variable

MAX_SIZE = 3


class DecomposeDetPass(NodeRewritePass):
    """Rewrite Det of 1x1, 2x2 and 3x3 matrices as Gather/Mul/Sub/Add."""

    name = "decompose-det"
    stage = Stage.LEGALIZE
    priority = 30
    ops = frozenset({"Det"})

    def check(self, graph: gs.Graph, det: gs.Node, ctx: PassContext) -> Match[int] | Decline:
        x = det.inputs[0]
        if float_type(x) is None:
            return Decline("the input is not of a known float type")
        shape = x.shape
        if shape is None or len(shape) < 2 or not all(isinstance(d, (int, np.integer)) for d in shape[-2:]):
            return Decline("the matrix size (last two dims) is not static")
        n = int(shape[-1])
        if n != int(shape[-2]) or n > MAX_SIZE or n < 1:
            return Decline(f"matrix size {shape[-2]}x{shape[-1]}: only 1x1 to {MAX_SIZE}x{MAX_SIZE} are decomposed")
        return Match(f"Det of {n}x{n} matrices written as products of entries", n)

    def rewrite(self, graph: gs.Graph, det: gs.Node, match: Match[int], ctx: PassContext) -> None:
        x, out, n = det.inputs[0], det.outputs[0], match.data
        base = det.name or "Det"
        nodes: list[gs.Node] = []

        def op(kind: str, *inputs: gs.Tensor, **attrs) -> gs.Tensor:
            result = variable(graph, f"{base}/{kind}_output", out)
            nodes.append(node(graph, kind, f"{base}/{kind}", list(inputs), [result], **attrs))
            return result

        rows = [op("Gather", x, make_constant(graph, f"{base}_row{i}", np.array(i, dtype=np.int64)), axis=-2)
                for i in range(n)]
        for r in rows:
            r.shape = None
        m = [[op("Gather", rows[i], make_constant(graph, f"{base}_col{j}", np.array(j, dtype=np.int64)), axis=-1)
              for j in range(n)] for i in range(n)]
        if n == 1:
            result = op("Identity", m[0][0])
        elif n == 2:
            result = op("Sub", op("Mul", m[0][0], m[1][1]), op("Mul", m[0][1], m[1][0]))
        else:
            def minor(r1, c1, r2, c2):
                return op("Sub", op("Mul", m[r1][c1], m[r2][c2]), op("Mul", m[r1][c2], m[r2][c1]))

            t0 = op("Mul", m[0][0], minor(1, 1, 2, 2))
            t1 = op("Mul", m[0][1], minor(1, 0, 2, 2))
            t2 = op("Mul", m[0][2], minor(1, 0, 2, 1))
            result = op("Add", op("Sub", t0, t1), t2)
        replace_pattern(graph, [det], out, nodes, result)
