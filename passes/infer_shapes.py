"""Annotate tensors with dtypes and shapes from ONNX shape inference.

Rewrites nothing: it adds type and shape facts that other passes check before they
rewrite (a Reshape to the same shape, a Cast to the same type). It runs on a weightless
export, so it costs no memory for weights. It must not change graph input shapes.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from fusekit.pass_infra import Pass, PassContext, Stage
from fusekit.shapes import annotate_shapes


class InferShapesPass(Pass):
    """Store inferred dtypes and shapes on the graph's tensors."""

    name = "infer-shapes"
    stage = Stage.SHAPES
    priority = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> int:
        return annotate_shapes(graph)
