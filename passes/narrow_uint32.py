"""Give a UINT32 constant read only by Casts the type INT32 when its values fit.

TensorRT has no UINT32 (neither initializers nor Casts to it), and exporters emit UINT32
constants that are immediately cast (index tables, hash seeds). When every value is in
[0, 2**31 - 1], the INT32 constant holds the same integers, and a Cast's result depends
only on the integer it reads (rounding to a float type, wrap-around modulo 2**bits to an
integer type, non-zero to bool), so every consuming Cast computes exactly what it did.

Must not: rewrite a constant with a value >= 2**31, one read by anything but a Cast to one
of the types listed in ``TARGETS`` (a Cast to UINT32 itself keeps the type), one that is a
graph output, or UINT32 tensors computed at run time (their values are unknown: Cast to
UINT32 of a negative or large float has no exact INT32 equivalent).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, is_graph_io, live_consumers, make_constant, onnx_type, type_name
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

TP = onnx.TensorProto
TARGETS = frozenset({TP.FLOAT, TP.DOUBLE, TP.FLOAT16, TP.INT8, TP.INT16, TP.INT32, TP.INT64, TP.UINT8,
                     TP.UINT16, TP.BOOL})
INT32_MAX = np.iinfo(np.int32).max


class NarrowUint32Pass(NodeRewritePass):
    """Rewrite a UINT32 constant read only by Casts as an INT32 constant (values < 2**31)."""

    name = "narrow-uint32"
    stage = Stage.LEGALIZE
    priority = 50
    ops = frozenset({"Cast"})

    def check(self, graph: gs.Graph, cast: gs.Node, ctx: PassContext) -> Match[np.ndarray] | Decline:
        source = cast.inputs[0]
        values = constant_array(source)
        if values is None:
            if onnx_type(source.dtype) == TP.UINT32:
                return Decline(f"UINT32 input {source.name!r} is computed at run time (values unknown)")
            return Decline("the input is not a constant")
        if onnx_type(values.dtype) != TP.UINT32:
            return Decline(f"the constant is {type_name(onnx_type(values.dtype))}, not uint32")
        if is_graph_io(graph, source):
            return Decline(f"{source.name!r} is a graph output")
        if values.size and int(values.max()) > INT32_MAX:
            return Decline(f"value {int(values.max())} does not fit int32")
        for reader in live_consumers(source):
            if reader.op != "Cast" or (reader.domain or "") not in self.domains:
                return Decline(f"{source.name!r} is also read by {reader.op} {reader.name!r}")
            to = int(reader.attrs.get("to", 0))
            if to not in TARGETS:
                return Decline(f"{reader.name!r} casts to {type_name(to)}: not a target proven exact here")
        return Match(f"uint32 constant {source.name!r} ({values.size} values < 2**31) stored as int32", values)

    def rewrite(self, graph: gs.Graph, cast: gs.Node, match: Match[np.ndarray], ctx: PassContext) -> None:
        source = cast.inputs[0]
        narrowed = make_constant(graph, f"{source.name}_int32", match.data.astype(np.int32))
        for reader in live_consumers(source):
            reader.inputs = [narrowed if t is source else t for t in reader.inputs]
