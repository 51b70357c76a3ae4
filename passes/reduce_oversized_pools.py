"""Rewrite a pool whose window TensorRT refuses, and which covers its whole input, as a global pool.

TensorRT's pooling layer takes windows of volume below 100000 (2 spatial dims; 31622776 for 3)
and strides up to 100000 (:mod:`fusekit.trt_limits`). Exporters write larger windows where
they mean "pool everything": Hugging Face's EfficientNet ends in ``AveragePool
kernel_shape=[2560,2560] strides=[2560,2560] ceil_mode=1 count_include_pad=1`` over a 7x7
map. When the window covers the whole padded input on every spatial axis (kernel >= input
+ pads, so the output is 1 on every spatial axis), the pool is one reduction over all
spatial axes:

- MaxPool: ``GlobalMaxPool`` (padding never wins a max);
- LpPool: ``GlobalLpPool`` with the same p (padding adds |0|^p = 0);
- AveragePool: the window's sum divided as onnxruntime 1.32's kernels divide it (measured on
  single-output pools, 1 to 3 spatial dims): by the number of input elements with
  ``count_include_pad=0``; with ``count_include_pad=1``, by the padded extent
  ``prod(input + pads)``, except in the kernel of opsets 7-18 with ``ceil_mode=0``, which
  divides by the kernel volume ``prod(kernel_shape)`` (the window past the padding counted
  too). A divisor equal to the input's size is ``GlobalAveragePool``; any other is
  ``ReduceSum`` over the spatial axes divided by it. (Hugging Face's EfficientNet pool,
  ceil_mode=1 without pads, is a plain GlobalAveragePool.)

``auto_pad`` pads are those onnxruntime computes (SAME_UPPER/SAME_LOWER: the ceil(in/stride)
output's pad, split with the extra element at the end/start; VALID: none).

Must not: rewrite a window TensorRT takes; a window short of the padded input on some axis
(the output then has several positions); a window reaching a full stride past it (the
output would be empty); dilations other than 1 (the window skips elements); non-static
spatial dims; a MaxPool whose Indices output is read; an average with padding counted in
a type other than float32/float64 (the divisor may not be representable).
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from fusekit.passes._pattern import node as new_node
from fusekit.passes._pattern import np_dtype, replace_pattern, variable

from fusekit.graph_edit import is_graph_io, live_consumers, make_constant, onnx_type
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.trt_limits import POOL_OPS, pool_window_problem

_DIVIDE_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _pads(pool: gs.Node, sizes: list[int], kernel: list[int], strides: list[int]) -> list[int] | str:
    """Begin pads then end pads, as onnxruntime computes them; a string when unsupported."""
    n = len(sizes)
    auto_pad = pool.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "NOTSET":
        pads = [int(p) for p in pool.attrs.get("pads", [0] * 2 * n)]
        return pads if len(pads) == 2 * n else f"pads {pads} do not have {2 * n} entries"
    if auto_pad == "VALID":
        return [0] * 2 * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad {auto_pad!r} is not known"
    needed = [max(0, (-(-x // s) - 1) * s + k - x) for x, k, s in zip(sizes, kernel, strides)]
    begin = [p // 2 if auto_pad == "SAME_UPPER" else (p + 1) // 2 for p in needed]
    return begin + [p - b for p, b in zip(needed, begin)]


class ReduceOversizedPoolsPass(NodeRewritePass):
    """Rewrite AveragePool/MaxPool/LpPool over TensorRT's window limit that covers its input as a global reduction."""

    name = "reduce-oversized-pools"
    stage = Stage.LEGALIZE
    priority = 40
    ops = POOL_OPS

    def check(self, graph: gs.Graph, pool: gs.Node, ctx: PassContext) -> Match | Decline:
        kernel = [int(k) for k in pool.attrs.get("kernel_shape", [])]
        strides = [int(s) for s in pool.attrs.get("strides", [1] * len(kernel))]
        problem = pool_window_problem(kernel, strides)
        if problem is None:
            return Decline(f"window {kernel} and strides {strides} are within TensorRT's pooling limits")
        if any(int(d) != 1 for d in pool.attrs.get("dilations", [])):
            return Decline("dilations other than 1: the window skips elements")
        if len(pool.outputs) > 1 and (live_consumers(pool.outputs[1]) or is_graph_io(graph, pool.outputs[1])):
            return Decline("the Indices output is read")
        x = pool.inputs[0]
        spatial = None if x.shape is None else list(x.shape[2:])
        if spatial is None or len(spatial) != len(kernel) or \
                any(not isinstance(d, (int, np.integer)) or d < 1 for d in spatial):
            return Decline("the input's spatial dims are not static")
        sizes = [int(d) for d in spatial]
        pads = _pads(pool, sizes, kernel, strides)
        if isinstance(pads, str):
            return Decline(pads)
        padded = [x_ + b + e for x_, b, e in zip(sizes, pads[:len(sizes)], pads[len(sizes):])]
        for axis, (k, p, s) in enumerate(zip(kernel, padded, strides)):
            if k < p:
                return Decline(f"{problem}, and the window ({k}) is shorter than the padded input ({p}) on "
                               f"spatial axis {axis}: the output has several positions")
            if k - p >= s:
                return Decline(f"the window ({k}) reaches a full stride ({s}) past the padded input ({p}) on "
                               f"spatial axis {axis}: the output is empty")
        if pool.op != "AveragePool":
            target = "GlobalMaxPool" if pool.op == "MaxPool" else f"GlobalLpPool (p={pool.attrs.get('p', 2)})"
            return Match(f"{pool.op} window {kernel} over the whole {sizes} input written as {target}", None)
        divisor = prod(sizes)
        if int(pool.attrs.get("count_include_pad", 0)):
            old_kernel = (graph.opset or 0) < 19 and not int(pool.attrs.get("ceil_mode", 0))
            divisor = prod(kernel) if old_kernel else prod(padded)
        if divisor == prod(sizes):
            return Match(f"AveragePool window {kernel} over the whole {sizes} input written as GlobalAveragePool",
                         None)
        if onnx_type(x.dtype) not in _DIVIDE_TYPES:
            return Decline("padding counts in the average and the input is not float32/float64")
        return Match(f"AveragePool window {kernel} over the whole {sizes} input, padding counted, written as "
                     f"ReduceSum / {divisor}", divisor)

    def rewrite(self, graph: gs.Graph, pool: gs.Node, match: Match, ctx: PassContext) -> None:
        x, out = pool.inputs[0], pool.outputs[0]
        base = pool.name or pool.op
        if match.data is None:
            op = {"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool", "LpPool": "GlobalLpPool"}[pool.op]
            attrs = {"p": int(pool.attrs.get("p", 2))} if pool.op == "LpPool" else {}
            result = variable(graph, f"{base}/{op}_output", like=out)
            replace_pattern(graph, [pool], out, [new_node(graph, op, f"{base}/{op}", [x], [result], **attrs)], result)
            return
        axes = list(range(2, len(x.shape)))
        total = variable(graph, f"{base}/ReduceSum_output", like=out)
        if graph.opset >= 13:
            axes_input = make_constant(graph, f"{base}_axes", np.array(axes, np.int64))
            reduce = new_node(graph, "ReduceSum", f"{base}/ReduceSum", [x, axes_input], [total], keepdims=1)
        else:
            reduce = new_node(graph, "ReduceSum", f"{base}/ReduceSum", [x], [total], axes=axes, keepdims=1)
        divisor = make_constant(graph, f"{base}_divisor", np.array(match.data, dtype=np_dtype(x)))
        result = variable(graph, f"{base}/Div_output", like=out)
        divide = new_node(graph, "Div", f"{base}/Div", [total, divisor], [result])
        replace_pattern(graph, [pool], out, [reduce, divide], result)
