"""Write a global average pool of an NCHW tensor as a mean over its NHWC transpose.

Rewrite, for x of rank 4 [N, C, H, W]:

- ``ReduceMean(x, axes=[2, 3], keepdims=0)`` (axes as attribute or constant input, also
  spelled ``[-2, -1]``) -> ``ReduceMean(Transpose(x, perm=[0, 2, 3, 1]), axes=[1, 2],
  keepdims=0)``;
- ``Flatten(GlobalAveragePool(x), axis=1)`` (the pool read by nothing else) -> the same.

Both sides are the [N, C] mean of each channel over the same H*W elements: the transpose
only reorders memory (mean_{h,w} x[n,c,h,w] = mean_{h,w} T(x)[n,h,w,c]). TensorRT runs
convolutions channels-last, and this form lets it fuse the layout change into the mean.

Must not rewrite when: the rank of x is unknown or not 4; ReduceMean keeps its dims or
reduces other axes, or its axes are not constant; the pool is read by anything but one
Flatten(axis=1), or is a graph output (the [N, C, 1, 1] result would need a transpose
back).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, is_graph_io, live_consumers, make_constant
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import node, replace_pattern, variable

AXES_AS_INPUT_OPSET = 18  # ReduceMean's axes are an input from opset 18, an attribute before
TO_CHANNELS_LAST = [0, 2, 3, 1]


def _axes(graph: gs.Graph, mean: gs.Node) -> list[int] | None:
    if graph.opset >= AXES_AS_INPUT_OPSET:
        if len(mean.inputs) < 2 or not mean.inputs[1].name:
            return None
        axes = constant_array(mean.inputs[1])
        return None if axes is None else [int(a) for a in np.ravel(axes)]
    axes = mean.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


class ChannelsLastMeanPass(NodeRewritePass):
    """Write a spatial mean of a rank-4 tensor (ReduceMean over [2, 3], or GlobalAveragePool
    then Flatten) as a ReduceMean over [1, 2] of its NHWC transpose."""

    name = "channels-last-mean"
    stage = Stage.FUSION
    priority = 16
    ops = frozenset({"ReduceMean", "GlobalAveragePool"})

    def check(self, graph: gs.Graph, root: gs.Node, ctx: PassContext) -> Match[dict[str, Any]] | Decline:
        x = root.inputs[0]
        if x.shape is None or len(x.shape) != 4:
            return Decline(f"input rank is {'unknown' if x.shape is None else len(x.shape)}, not 4")
        if root.op == "GlobalAveragePool":
            out = root.outputs[0]
            readers = live_consumers(out)
            if (is_graph_io(graph, out) or len(readers) != 1 or readers[0].op != "Flatten"
                    or int(readers[0].attrs.get("axis", 1)) not in (1, -3)):
                return Decline("GlobalAveragePool is not read only by Flatten(axis=1)")
            return Match("GlobalAveragePool + Flatten written as ReduceMean over axes [1, 2] of the NHWC transpose",
                         dict(nodes=[root, readers[0]], out=readers[0].outputs[0]))
        axes = _axes(graph, root)
        if axes is None:
            return Decline("reduction axes are not constant")
        if sorted(a % 4 for a in axes) != [2, 3]:
            return Decline(f"axes {axes} are not the spatial axes [2, 3]")
        if int(root.attrs.get("keepdims", 1)):
            return Decline("keepdims=1: the [N, C, 1, 1] result would need a transpose back")
        return Match("ReduceMean over [2, 3] written as ReduceMean over axes [1, 2] of the NHWC transpose",
                     dict(nodes=[root], out=root.outputs[0]))

    def rewrite(self, graph: gs.Graph, root: gs.Node, match: Match[dict[str, Any]], ctx: PassContext) -> None:
        """A ReduceMean keeps its name and is edited in place; a pool + Flatten is replaced."""
        x = root.inputs[0]
        base = root.name.removesuffix(root.op).rstrip("/_") or root.name or "pool"
        shape = list(x.shape)
        nhwc = variable(graph, f"{base}_channels_last")
        nhwc.dtype, nhwc.shape = x.dtype, [shape[0], shape[2], shape[3], shape[1]]
        transpose = node(graph, "Transpose", f"{base}/ChannelsLast", [x], [nhwc], perm=TO_CHANNELS_LAST)
        axes = None
        if graph.opset >= AXES_AS_INPUT_OPSET:
            axes = make_constant(graph, f"{base}_mean_axes", np.array([1, 2], dtype=np.int64))
        if root.op == "ReduceMean":
            graph.nodes.append(transpose)
            root.inputs[0] = nhwc
            if axes is None:
                root.attrs["axes"] = [1, 2]
            else:
                root.inputs[1] = axes
            return
        out = match.data["out"]
        mean = variable(graph, f"{base}_mean_output", out)
        inputs, attrs = ([nhwc], dict(axes=[1, 2])) if axes is None else ([nhwc, axes], {})
        reduce = node(graph, "ReduceMean", f"{base}/ReduceMean", inputs, [mean], keepdims=0, **attrs)
        replace_pattern(graph, match.data["nodes"], out, [transpose, reduce], mean)
