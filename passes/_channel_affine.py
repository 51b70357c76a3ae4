"""Per-output-channel scale and shift folded into the weights of linear ops (a helper, not a pass).

Shared by ``fold-batchnorm`` and ``fold-scale-into-weights`` (which both leave unfolded
what ``_kept_scale_shift.scale_shift_stays`` says TensorRT fuses better unfolded).
A *linear op* is a Conv, ConvTranspose, Gemm or MatMul with constant weights. Each output
channel ``c`` of it is linear in its own slice of the weight, plus its bias, so for vectors
``scale``/``shift`` over the output channels::

    op(x, W, b)[.., c, ..] * scale[c] + shift[c]  ==  op(x, W', b')[.., c, ..]
    with  W'_c = W_c * scale[c],  b'[c] = b[c] * scale[c] + shift[c]

The variants differ only in where the output channel sits in the weight, the *filter
axis* (:meth:`LinearOp.filter_layout`): Conv 0; ConvTranspose 1, in ``group`` blocks of
axis 0 (weight ``(C_in, C_out/group, k...)``); Gemm ``1 - transB``; MatMul 1. Gemm keeps
its bias in ``C`` (times ``beta``), MatMul has none, so a shift becomes a new ``Add``.

All arithmetic is done in float64 and cast back once to the weight's type: ``fold``
computes the new values (and declines if one would overflow that type) during a pass's
check, ``apply`` writes them. New small constants keep their float64 values beside the
graph (:func:`exact_constant`), so a later rewrite composing them again in the same run
starts from those, not from their rounded copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.graph_edit import (constant_array, constant_of, fresh_name, is_weightless, make_constant, notes, onnx_type,
                                optional_input, producer)
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline

FLOAT_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def place(values: np.ndarray, weight_shape: tuple[int, ...], axis: int, groups: int = 1) -> np.ndarray:
    """``values`` (one per channel) shaped to broadcast along ``axis`` of a weight.

    With ``groups > 1`` (``axis`` 1) the channels also run in blocks over axis 0: channel
    ``g * n + j`` (``n = weight_shape[1]``) is ``w[block g of axis 0, j]``. That is the
    layout of a grouped ConvTranspose's output channels and of a grouped Conv's input
    channels.
    """
    shape = [1] * len(weight_shape)
    shape[axis] = weight_shape[axis]
    if groups == 1:
        return values.reshape(shape)
    shape[0] = weight_shape[0]
    blocks = values.reshape(groups, 1, weight_shape[axis])
    return np.broadcast_to(blocks, (groups, weight_shape[0] // groups, weight_shape[axis])).reshape(shape)


def constant_info(tensor: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype | None] | None:
    """(shape, NumPy dtype or None) of a constant tensor without reading its values; None if
    not constant. Checks stay cheap on large weights: values are read only to rewrite."""
    const = constant_of(tensor)
    if const is None or is_weightless(const):  # no data: its values cannot be folded
        return None
    enum = onnx_type(const.dtype)
    try:
        dtype = None if enum is None else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(enum))
    except (TypeError, KeyError, ValueError):
        dtype = None
    return tuple(int(d) for d in const.shape), dtype


def matrix_weight(tensor: gs.Tensor, missing: str) -> tuple[gs.Tensor, bool, tuple[int, ...]] | str:
    """A MatMul's B operand as (stored constant, whether it is reached through a Transpose,
    stored shape): a rank-2 constant ([K, N], False) or a Transpose (perm [1, 0]) of one
    ([N, K], True); else why not (``missing`` if it is neither). Values are not read."""
    info = constant_info(tensor)
    if info is not None:
        shape = info[0]
        return (tensor, False, shape) if len(shape) == 2 else f"weight has rank {len(shape)}, not 2"
    node = producer(tensor)
    if node is not None and node.op == "Transpose":
        info = constant_info(node.inputs[0])
        perm = node.attrs.get("perm")
        if info is not None and len(info[0]) == 2 and (perm is None or list(perm) == [1, 0]):
            return node.inputs[0], True, info[0]
    return missing


def cast_once(exact: np.ndarray, dtype: np.dtype, factor_of: np.ndarray | None = None) -> np.ndarray | str:
    """``exact`` (float64) cast to ``dtype``, or why not: a finite value that overflows, or a
    multiplying constant (``factor_of`` given: the values it was scaled from, or ``()`` for a
    new scale) whose nonzero value falls below the smallest normal of ``dtype``, where
    precision is lost (a weight that was normal, or any value of a new scale)."""
    cast = np.asarray(exact).astype(dtype)
    if not np.array_equal(np.isfinite(cast), np.isfinite(exact)):
        return f"overflow {dtype}"
    if factor_of is not None:
        tiny = np.finfo(dtype).tiny
        lost = (np.abs(exact) < tiny) & (exact != 0)
        if np.size(factor_of):
            lost &= np.abs(np.asarray(factor_of, np.float64)) >= tiny
        if np.any(lost):
            return f"underflow {dtype} to subnormal values ({np.abs(exact)[lost].max():g}), losing precision"
    return cast


MAX_CANCELLATION = 4.0  # a merged constant may be this much smaller than its largest part (2 bits)


def cancellation(parts: list[np.ndarray], total: np.ndarray) -> str | None:
    """Why adding the constant ``parts`` into ``total`` ahead of time would change results, or None.

    ``(x + a) + b`` rounds ``x + a`` to the precision of ``|a|``; ``x + (a + b)`` to that
    of ``|a + b|``. When the sum is much smaller than its largest part (``65504 - 65504``)
    the original lost the small ``x`` and the merged one keeps it: the results differ by
    far more than a few ulps of what flows. Within :data:`MAX_CANCELLATION` they differ by
    at most a few ulps of the output.
    """
    largest = np.max(np.abs(np.broadcast_arrays(*[np.asarray(p, np.float64) for p in parts])), axis=0)
    total = np.abs(np.asarray(total, np.float64))
    bad = np.broadcast_to(total * MAX_CANCELLATION < largest, np.broadcast_shapes(total.shape, largest.shape))
    if not np.any(bad):
        return None
    i = np.unravel_index(int(np.argmax(bad)), bad.shape)
    big, small = np.broadcast_to(largest, bad.shape)[i], np.broadcast_to(total, bad.shape)[i]
    return f"its constants cancel ({big:g} merged to {small:g}): merging would change the result"


def scale_detour(partials: list[np.ndarray], total: np.ndarray) -> str | None:
    """Why multiplying the scales ``partials`` lead through (running products) into ``total``
    ahead of time would change results, or None.

    ``x * a * b`` holds ``x * a`` on the way: when ``|a|`` lies far outside the span from 1
    to ``|a * b|`` that value can overflow or underflow where ``x`` and ``x * a * b`` do not
    (``x * 1e30 * 1e-30``). Within :data:`MAX_CANCELLATION` of the span it cannot.
    """
    total = np.abs(np.asarray(total, np.float64))
    low, high = np.minimum(total, 1.0) / MAX_CANCELLATION, np.maximum(total, 1.0) * MAX_CANCELLATION
    for p in partials:
        p = np.abs(np.asarray(p, np.float64))
        outside = (p < low) | (p > high)
        if np.any(outside):
            worst, end = (np.broadcast_to(a, outside.shape)[outside].flat[0] for a in (p, total))
            return f"an intermediate scale {worst:g} lies far outside 1..{end:g}: the value on the way could " \
                   "overflow or underflow"
    return None


@dataclass(frozen=True)
class Folded:
    """New weight and bias of a linear op in float64 (None: stays as it is), and their type."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    dtype: np.dtype


class ExactConstants(dict):
    """id(constant) -> (constant, its float64 values): kept in the graph's notes."""

EXACT_MAX_VALUES = 4096  # biases and scale/shift constants, not large weights: memory stays small


def exact_constant(graph: gs.Graph, base: str, exact: np.ndarray, dtype: np.dtype) -> gs.Constant:
    """A new constant of ``exact`` cast to ``dtype``; the float64 values are kept beside the
    graph (small constants only), so a later rewrite of the same run composes them, not
    their rounded copy: a constant is cast once however many rounds build it."""
    const = make_constant(graph, base, np.asarray(exact).astype(dtype))
    if np.dtype(dtype) != np.float64 and np.size(exact) <= EXACT_MAX_VALUES:
        notes(graph).state(ExactConstants)[id(const)] = (const, np.asarray(exact, np.float64))
    return const


def exact_value(graph: gs.Graph, tensor: gs.Tensor) -> np.ndarray | None:
    """The float64 values :func:`exact_constant` kept for ``tensor``, if any."""
    entry = notes(graph).state(ExactConstants).get(id(tensor))
    return entry[1] if entry is not None and entry[0] is tensor else None


def constant_values(graph: gs.Graph, tensor: gs.Tensor) -> np.ndarray | None:
    """A constant's values: the float64 ones it was cast from if kept, else as stored."""
    exact = exact_value(graph, tensor)
    return exact if exact is not None else constant_array(tensor)


def channel_vector(const: np.ndarray, layout: tuple[int | None, int], channels: int) -> np.ndarray | Decline:
    """A constant that broadcasts per output channel (or is a scalar) as one float64 per channel.

    ``layout`` is the output's (rank or None, channel axis counted from the end). With an
    unknown rank only constants of rank up to the channel axis's distance from the end are
    safe: they can neither add dims to the output nor broadcast it.
    """
    rank, axis = layout
    limit = rank if rank is not None else -axis
    shape = tuple(const.shape)
    if len(shape) > limit:
        return Decline(f"the constant's rank {len(shape)} exceeds the output's "
                       f"{'rank ' + str(rank) if rank is not None else 'known rank'}: it would broadcast it")
    padded = (1,) * (limit - len(shape)) + shape
    others = [d for i, d in enumerate(padded) if i != limit + axis]
    if any(d != 1 for d in others) or padded[axis] not in (1, channels):
        return Decline(f"constant of shape {list(shape)} does not broadcast per output channel "
                       f"({channels} channels on axis {axis})")
    return np.broadcast_to(np.asarray(const, np.float64).reshape(-1), (channels,)).copy()


class LinearOp:
    """A Conv and the base of the variants: output channel ``c`` is ``W[c]`` and ``B[c]``."""

    def __init__(self, graph: gs.Graph, node: gs.Node) -> None:
        self.graph, self.node = graph, node
        info = constant_info(node.inputs[1]) if len(node.inputs) > 1 else None
        self.weight_shape, self.weight_dtype = info if info is not None else (None, None)

    @cached_property
    def weight(self) -> np.ndarray:
        """The weight's values (read on first use: only folding needs them)."""
        return constant_values(self.graph, self.node.inputs[1])

    def filter_layout(self) -> tuple[int, int]:
        """(the weight's axis of output channels, groups splitting it over axis 0)."""
        return 0, 1

    @property
    def channels(self) -> int:
        axis, groups = self.filter_layout()
        return self.weight_shape[axis] * groups

    def output_layout(self) -> tuple[int | None, int]:
        """(rank of the output or None, its channel axis counted from the end)."""
        rank = len(self.weight_shape)
        return rank, 1 - rank

    def problem(self) -> str | None:
        """Why the weights cannot absorb a per-channel scale and shift, or None."""
        if self.weight_shape is None:
            return "its weights are not constant"
        if self.weight_dtype not in FLOAT_DTYPES:
            return f"its weights are {self.weight_dtype}, not float16/float32/float64"
        return self.shape_problem() or self.bias_problem()

    def shape_problem(self) -> str | None:
        if len(self.weight_shape) < 3:
            return f"its weight has rank {len(self.weight_shape)}"
        _, groups = self.filter_layout()
        if groups < 1 or self.weight_shape[0] % groups:
            return f"group {groups} does not divide the weight's {self.weight_shape[0]} rows"
        return None

    def bias_problem(self) -> str | None:
        bias = optional_input(self.node, 2)
        if bias is not None:
            info = constant_info(bias)
            if info is None:
                return "its bias is not constant"
            if int(np.prod(info[0])) != self.channels:
                return f"its bias has {int(np.prod(info[0]))} values for {self.channels} channels"
        return None

    def fold(self, scale: np.ndarray | None, shift: np.ndarray | None) -> Folded | Decline:
        """The new weight and bias for ``y * scale + shift`` (per output channel, float64 in),
        computed in float64 and cast once; Decline if a value overflows the weight's type."""
        weight = None
        if scale is not None:
            axis, groups = self.filter_layout()
            weight = self.weight.astype(np.float64)
            weight *= place(scale, weight.shape, axis, groups)  # in place: one float64 copy of a weight
        bias = self.folded_bias(scale, shift)
        source = None if weight is None else self.weight
        for label, value, factor_of in (("weights", weight, source), ("bias", bias, None)):
            if value is not None and isinstance(problem := cast_once(value, self.weight_dtype, factor_of), str):
                return Decline(f"the folded {label} {problem}")
        return Folded(weight, bias, self.weight_dtype)

    def apply(self, folded: Folded) -> gs.Tensor:
        """Write a :meth:`fold` result; return the tensor now holding ``y * scale + shift``."""
        if folded.weight is not None:
            self.set_input(1, "weight", folded.weight, folded.dtype)
        return self.node.outputs[0] if folded.bias is None else self.write_bias(folded.bias, folded.dtype)

    def folded_bias(self, scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray | None:
        """Conv/ConvTranspose: ``B * scale + shift`` (None: the bias stays as it is)."""
        bias = optional_input(self.node, 2)
        if bias is None and shift is None:
            return None
        b = np.zeros(self.channels) if bias is None else \
            constant_values(self.graph, bias).astype(np.float64).reshape(-1)
        if scale is not None:
            b = b * scale
        return b if shift is None else b + shift

    def write_bias(self, exact: np.ndarray, dtype: np.dtype) -> gs.Tensor:
        self.set_input(2, "bias", exact, dtype)
        return self.node.outputs[0]

    def set_input(self, index: int, label: str, exact: np.ndarray, dtype: np.dtype) -> None:
        """Give the node a new constant, ``exact`` cast to ``dtype``, at input ``index`` (the
        old one may be shared). It is named ``<old>_folded``, else ``<node>_<label>``."""
        old = optional_input(self.node, index)
        base = f"{old.name}_folded" if old is not None else f"{self.node.name or self.node.op}_{label}"
        const = exact_constant(self.graph, base, exact, dtype)
        while len(self.node.inputs) < index:
            self.node.inputs.append(gs.Variable.empty())
        if len(self.node.inputs) > index:
            self.node.inputs[index] = const
        else:
            self.node.inputs.append(const)


class ConvTransposeOp(LinearOp):
    """Weight ``(C_in, C_out/group, k...)``: output channels on axis 1, in group blocks."""

    def filter_layout(self) -> tuple[int, int]:
        return 1, int(self.node.attrs.get("group", 1))


class GemmOp(LinearOp):
    """``alpha * A' B' + beta * C``: output channels are the columns of ``B'``; bias is ``C``."""

    def filter_layout(self) -> tuple[int, int]:
        return 1 - int(self.node.attrs.get("transB", 0)), 1

    def output_layout(self) -> tuple[int | None, int]:
        return 2, -1

    def shape_problem(self) -> str | None:
        return f"its B has rank {len(self.weight_shape)}" if len(self.weight_shape) != 2 else None

    def bias_problem(self) -> str | None:
        c = optional_input(self.node, 2)
        if c is not None and constant_info(c) is None:
            return "its C is not constant"
        return None

    def folded_bias(self, scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray | None:
        """``beta * C * scale + shift`` (then ``beta := 1``); None: C stays as it is."""
        c_in = optional_input(self.node, 2)
        if c_in is None and shift is None:
            return None
        beta = float(self.node.attrs.get("beta", 1.0))
        c = np.zeros(()) if c_in is None or beta == 0 else beta * constant_values(self.graph, c_in).astype(np.float64)
        if scale is not None:
            c = c * scale  # (N,) over C's last axis: C stays broadcastable to (M, N)
        return c if shift is None else c + shift

    def write_bias(self, exact: np.ndarray, dtype: np.dtype) -> gs.Tensor:
        self.node.attrs["beta"] = 1.0
        self.set_input(2, "bias", exact, dtype)
        return self.node.outputs[0]


class MatMulOp(LinearOp):
    """``x @ W`` with a constant 2-D ``W``: output channels are W's columns, the last axis."""

    def filter_layout(self) -> tuple[int, int]:
        return 1, 1

    def output_layout(self) -> tuple[int | None, int]:
        shape = self.node.inputs[0].shape
        return (len(shape) if shape is not None else None), -1

    def shape_problem(self) -> str | None:
        if len(self.weight_shape) != 2:
            return f"its weight has rank {len(self.weight_shape)}, not 2"
        return None

    def bias_problem(self) -> str | None:
        return None

    def folded_bias(self, scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray | None:
        """No bias input: the shift alone, for a new Add after the MatMul."""
        return shift

    def write_bias(self, exact: np.ndarray, dtype: np.dtype) -> gs.Tensor:
        out = self.node.outputs[0]
        biased = gs.Variable(fresh_name(self.graph, f"{out.name}_biased"), dtype=out.dtype, shape=out.shape)
        bias = exact_constant(self.graph, f"{self.node.name or 'MatMul'}_bias", exact, dtype)
        self.graph.nodes.append(gs.Node("Add", name=fresh_name(self.graph, f"{self.node.name or 'MatMul'}_bias"),
                                        inputs=[out, bias], outputs=[biased]))
        return biased


VARIANTS: dict[str, type[LinearOp]] = {"Conv": LinearOp, "ConvTranspose": ConvTransposeOp, "Gemm": GemmOp,
                                       "MatMul": MatMulOp}


def linear_op(graph: gs.Graph, node: gs.Node | None) -> LinearOp | None:
    """The node as a :class:`LinearOp` if it is one of the variants (default domain)."""
    if node is None or node.op not in VARIANTS or not is_default_domain(node):
        return None
    return VARIANTS[node.op](graph, node)
