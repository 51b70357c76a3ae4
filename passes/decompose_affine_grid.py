"""Decompose 2D ``AffineGrid`` with a constant size into a MatMul with a constant base grid.

TensorRT cannot parse AffineGrid. For ``size`` = [N, C, H, W] known, the grid is

    grid[n, h, w] = theta[n] @ (x_w, y_h, 1)

with x_w = -1 + 2w / (W - 1) under ``align_corners=1`` and (2w + 1) / W - 1 otherwise (y
likewise over H). Written as Reshape(MatMul(B, Transpose(theta)), [N, H, W, 2]) where B is
the constant [H*W, 3] base grid. Same values as onnxruntime up to float rounding.

Must not: rewrite a computed size, a 3D (5-element) size, or ``align_corners=1`` with a
spatial size of 1 (the linspace is then one point, spelled differently by runtimes).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import float_type, node, np_dtype, replace_pattern, variable


def base_grid(h: int, w: int, align_corners: bool, dtype) -> np.ndarray:
    """The [H*W, 3] rows (x, y, 1) of the normalized sampling grid, computed in float64."""
    def axis(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        return -1.0 + 2.0 * i / (n - 1) if align_corners else (2.0 * i + 1.0) / n - 1.0

    ys, xs = np.meshgrid(axis(h), axis(w), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], axis=1).astype(dtype)


class DecomposeAffineGridPass(NodeRewritePass):
    """Rewrite 2D AffineGrid of a constant size as MatMul with a constant base grid."""

    name = "decompose-affine-grid"
    stage = Stage.LEGALIZE
    priority = 50
    ops = frozenset({"AffineGrid"})

    def check(self, graph: gs.Graph, ag: gs.Node, ctx: PassContext) -> Match | Decline:
        if float_type(ag.inputs[0]) is None:
            return Decline("theta is not of a known float type")
        size = constant_array(ag.inputs[1])
        if size is None:
            return Decline("size is not a constant")
        size = [int(v) for v in np.asarray(size).ravel()]
        if len(size) != 4:
            return Decline(f"size {size}: only 2D grids (4-element size) are decomposed")
        align = bool(ag.attrs.get("align_corners", 0))
        if align and min(size[2:]) < 2:
            return Decline("align_corners with a spatial size of 1")
        return Match(f"AffineGrid of size {size} written as MatMul with a constant base grid", (size, align))

    def rewrite(self, graph: gs.Graph, ag: gs.Node, match: Match, ctx: PassContext) -> None:
        (n, _, h, w), align = match.data
        theta, out = ag.inputs[0], ag.outputs[0]
        base = ag.name or "AffineGrid"
        grid = make_constant(graph, f"{base}_base_grid", base_grid(h, w, align, np_dtype(theta)))
        t = variable(graph, f"{base}/Transpose_output", theta)
        t.shape = None
        flat = variable(graph, f"{base}/MatMul_output", out)
        flat.shape = None
        result = variable(graph, f"{base}/Reshape_output", out)
        nodes = [node(graph, "Transpose", f"{base}/Transpose", [theta], [t], perm=[0, 2, 1]),
                 node(graph, "MatMul", f"{base}/MatMul", [grid, t], [flat]),
                 node(graph, "Reshape", f"{base}/Reshape",
                      [flat, make_constant(graph, f"{base}_shape", np.array([n, h, w, 2], dtype=np.int64))], [result])]
        replace_pattern(graph, [ag], out, nodes, result)
