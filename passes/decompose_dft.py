"""Decompose ``DFT`` over a static signal length into MatMuls with a constant basis.

TensorRT cannot parse DFT. The DFT of length n is a matrix product: with
C[j, k] = cos(2 pi j k / n) and S[j, k] = sin(2 pi j k / n), a signal x = xr + i xi has

    forward:  Yr = xr C + xi S,          Yi = xi C - xr S
    inverse:  Yr = (xr C - xi S) / n,    Yi = (xi C + xr S) / n

(real input: xi = 0). ``onesided`` keeps the columns k = 0 .. n/2. Entries are read with
``Gather`` on the last (real/imaginary) axis, products are ``MatMul`` with [n, K] constants
(computed in float64, cast once), and the two parts are stacked again on a new last axis.
Same values as onnxruntime up to float rounding; O(n^2) work, for short fixed-length
transforms.

Must not: rewrite a computed axis or one other than -2 (the default, just before the
real/imaginary axis), a ``dft_length`` different from the signal length, an unknown
length or one above ``MAX_LENGTH``, inverse with onesided, or a non-float input.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant, optional_input
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._dft import MAX_LENGTH, dft_basis
from fusekit.passes._pattern import float_type, node, np_dtype, replace_pattern, variable


class DecomposeDftPass(NodeRewritePass):
    """Rewrite DFT of a static length along axis -2 as MatMuls with constant cos/sin bases."""

    name = "decompose-dft"
    stage = Stage.LEGALIZE
    priority = 60
    ops = frozenset({"DFT"})

    def check(self, graph: gs.Graph, dft: gs.Node, ctx: PassContext) -> Match | Decline:
        x = dft.inputs[0]
        if float_type(x) is None:
            return Decline("the input is not of a known float type")
        shape = x.shape
        if shape is None or len(shape) < 3 or shape[-1] not in (1, 2):
            return Decline("the input shape is unknown or has no real/imaginary last axis")
        rank = len(shape)
        axis = dft.attrs.get("axis", 1) if graph.opset < 20 else _axis_input(dft)
        if axis is None:
            return Decline("axis is not a constant")
        if axis % rank != rank - 2:
            return Decline(f"axis {axis}: only the axis before the real/imaginary one is decomposed")
        n = shape[-2]
        if not isinstance(n, (int, np.integer)) or n < 1:
            return Decline("the signal length is not static")
        if n > MAX_LENGTH:
            return Decline(f"signal length {n} is above {MAX_LENGTH} (the basis would be too large)")
        length = optional_input(dft, 1)
        if length is not None:
            value = constant_array(length)
            if value is None or int(np.asarray(value).ravel()[0]) != int(n):
                return Decline("dft_length is not the signal length")
        inverse, onesided = bool(dft.attrs.get("inverse", 0)), bool(dft.attrs.get("onesided", 0))
        if inverse and onesided:
            return Decline("inverse with onesided")
        if onesided and shape[-1] == 2:
            return Decline("onesided needs a real input")
        return Match(f"{'inverse ' if inverse else ''}DFT of length {n} written as MatMuls with a constant basis",
                     (int(n), inverse, onesided, shape[-1] == 2))

    def rewrite(self, graph: gs.Graph, dft: gs.Node, match: Match, ctx: PassContext) -> None:
        n, inverse, onesided, complex_input = match.data
        x, out = dft.inputs[0], dft.outputs[0]
        base = dft.name or "DFT"
        dtype = np_dtype(x)
        k = n // 2 + 1 if onesided else n
        basis_cos, basis_sin = dft_basis(n, k)
        scale = 1.0 / n if inverse else 1.0
        nodes: list[gs.Node] = []

        def const(name: str, value) -> gs.Constant:
            return make_constant(graph, f"{base}_{name}", np.asarray(value, dtype=dtype))

        def op(kind: str, *inputs: gs.Tensor, **attrs) -> gs.Tensor:
            result = variable(graph, f"{base}/{kind}_output", x)
            result.shape = None
            nodes.append(node(graph, kind, f"{base}/{kind}", list(inputs), [result], **attrs))
            return result

        cos, sin = const("cos", basis_cos * scale), const("sin", basis_sin * scale)
        part = [op("Gather", x, make_constant(graph, f"{base}_part{i}", np.array(i, dtype=np.int64)), axis=-1)
                for i in range(2 if complex_input else 1)]
        xr = part[0]
        sign = 1.0 if inverse else -1.0  # forward: e^(-i theta)
        if complex_input:
            xi = part[1]
            real = op("Sub" if inverse else "Add", op("MatMul", xr, cos), op("MatMul", xi, sin))
            imag = op("Add" if inverse else "Sub", op("MatMul", xi, cos), op("MatMul", xr, sin))
        else:
            real = op("MatMul", xr, cos)
            imag = op("MatMul", xr, const("signed_sin", basis_sin * scale * sign))
        minus_one = make_constant(graph, f"{base}_last_axis", np.array([-1], dtype=np.int64))
        result = op("Concat", op("Unsqueeze", real, minus_one), op("Unsqueeze", imag, minus_one), axis=-1)
        result.shape = out.shape
        replace_pattern(graph, [dft], out, nodes, result)


def _axis_input(dft: gs.Node) -> int | None:
    if len(dft.inputs) < 3 or not dft.inputs[2].name:
        return -2
    value = constant_array(dft.inputs[2])
    return None if value is None else int(np.asarray(value).ravel()[0])
