"""Decompose ``STFT`` over a static signal length into a frame Gather and MatMuls with a
constant cos/sin basis.

TensorRT's STFT support is partial (constant frame_step, initializer inputs, real signal).
With a static
signal length L, a constant frame_step s and a constant frame length n (the window's
length, or the ``frame_length`` input), the F = 1 + (L - n) // s frames are a ``Gather``
on the signal axis with the constant [F, n] index matrix idx[f, j] = f s + j, giving
[B, F, n, parts]; they are multiplied by the constant window (when there is one) and each
part goes through the DFT of length n as ``decompose-dft`` writes it: for x = xr + i xi

    Yr = xr C + xi S,    Yi = xi C - xr S      (real signal: xi = 0)

with ``onesided`` (the default) keeping the bins k = 0 .. n/2. The result is stacked to
[B, F, bins, 2], as onnxruntime's STFT. O(n^2) per frame, for short frames.

Must not: rewrite a computed frame_step, a computed frame_length or window, a frame_length
that differs from the window's length, an unknown signal length or one shorter than a
frame or longer than ``MAX_LENGTH``, a complex signal with onesided, or a non-float signal.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant, optional_input
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._dft import MAX_LENGTH, dft_basis
from fusekit.passes._pattern import float_type, node, np_dtype, replace_pattern, variable

MAX_INDICES = 1 << 24  # frames x frame_length int64 indices: 128 MiB at most


class DecomposeStftPass(NodeRewritePass):
    """Rewrite STFT with static sizes as a constant-index Gather, a window Mul and MatMuls."""

    name = "decompose-stft"
    stage = Stage.LEGALIZE
    priority = 60
    ops = frozenset({"STFT"})

    def check(self, graph: gs.Graph, stft: gs.Node, ctx: PassContext) -> Match | Decline:
        x = stft.inputs[0]
        if float_type(x) is None:
            return Decline("the signal is not of a known float type")
        shape = x.shape
        if shape is None or len(shape) != 3 or shape[-1] not in (1, 2):
            return Decline("the signal shape is unknown or not [batch, length, 1 or 2]")
        length = shape[1]
        if not isinstance(length, (int, np.integer)) or length < 1:
            return Decline("the signal length is not static")
        step = _input_scalar(stft, 1)
        if step is None:
            return Decline("frame_step is not a constant (tensorrt_rtx rejects a computed frame_step)")
        if step < 1:
            return Decline(f"frame_step {step} is not positive")
        window = optional_input(stft, 2)
        window_value = None
        if window is not None:
            window_value = constant_array(window)
            if window_value is None:
                return Decline("the window is not a constant")
            window_value = np.asarray(window_value)
            if window_value.ndim != 1:
                return Decline("the window is not 1-D")
        frame_length = _input_scalar(stft, 3)
        if optional_input(stft, 3) is not None and frame_length is None:
            return Decline("frame_length is not a constant")
        if window_value is not None:
            if frame_length is not None and frame_length != window_value.shape[0]:
                return Decline(f"frame_length {frame_length} is not the window's length {window_value.shape[0]}")
            frame_length = int(window_value.shape[0])
        if frame_length is None:
            return Decline("neither a window nor a frame_length gives the frame length")
        if frame_length < 1 or frame_length > length:
            return Decline(f"frame length {frame_length} is not within the signal length {length}")
        if frame_length > MAX_LENGTH:
            return Decline(f"frame length {frame_length} is above {MAX_LENGTH} (the basis would be too large)")
        frames = 1 + (int(length) - frame_length) // step
        if frames * frame_length > MAX_INDICES:
            return Decline(f"{frames} frames of {frame_length} need too many gather indices")
        onesided = bool(stft.attrs.get("onesided", 1))
        complex_input = shape[-1] == 2
        if onesided and complex_input:
            return Decline("onesided needs a real signal")
        return Match(f"STFT of {frames} frames of {frame_length} (step {step}) written as a Gather and MatMuls "
                     "with a constant basis", (frames, frame_length, step, window_value, onesided, complex_input))

    def rewrite(self, graph: gs.Graph, stft: gs.Node, match: Match, ctx: PassContext) -> None:
        frames, n, step, window, onesided, complex_input = match.data
        x, out = stft.inputs[0], stft.outputs[0]
        base = stft.name or "STFT"
        dtype = np_dtype(x)
        k = n // 2 + 1 if onesided else n
        basis_cos, basis_sin = dft_basis(n, k)
        nodes: list[gs.Node] = []

        def const(name: str, value, kind=None) -> gs.Constant:
            return make_constant(graph, f"{base}_{name}", np.asarray(value, dtype=kind or dtype))

        def op(kind: str, *inputs: gs.Tensor, **attrs) -> gs.Tensor:
            result = variable(graph, f"{base}/{kind}_output", x)
            result.shape = None
            nodes.append(node(graph, kind, f"{base}/{kind}", list(inputs), [result], **attrs))
            return result

        index = np.arange(frames, dtype=np.int64)[:, None] * step + np.arange(n, dtype=np.int64)[None, :]
        framed = op("Gather", x, const("frame_indices", index, np.int64), axis=1)  # [B, F, n, parts]
        if window is not None:
            framed = op("Mul", framed, const("window", window.reshape(n, 1)))
        part = [op("Gather", framed, const(f"part{i}", np.array(i), np.int64), axis=-1)
                for i in range(2 if complex_input else 1)]  # [B, F, n]
        xr = part[0]
        if complex_input:
            xi = part[1]
            cos, sin = const("cos", basis_cos), const("sin", basis_sin)
            real = op("Add", op("MatMul", xr, cos), op("MatMul", xi, sin))
            imag = op("Sub", op("MatMul", xi, cos), op("MatMul", xr, sin))
        else:
            real = op("MatMul", xr, const("cos", basis_cos))
            imag = op("MatMul", xr, const("negative_sin", -basis_sin))
        minus_one = const("last_axis", np.array([-1]), np.int64)
        result = op("Concat", op("Unsqueeze", real, minus_one), op("Unsqueeze", imag, minus_one), axis=-1)
        result.shape = out.shape
        replace_pattern(graph, [stft], out, nodes, result)


def _input_scalar(stft: gs.Node, i: int) -> int | None:
    tensor = optional_input(stft, i)
    if tensor is None:
        return None
    value = constant_array(tensor)
    if value is None or np.asarray(value).size != 1:
        return None
    return int(np.asarray(value).ravel()[0])
