"""Fold inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul next to it.

In inference a BatchNormalization is a per-channel affine map (channel axis 1)::

    BN(x) = (x - mean) / sqrt(var + epsilon) * gamma + beta = x * s + t
    s = gamma / sqrt(var + epsilon),  t = beta - mean * s

Rewrites, with ``s`` and ``t`` computed in float64 and each new weight cast back once to
the weight's type (float16, float32 or float64):

- after a linear op ``P`` (its output's only reader): ``P``'s output channel ``c`` is
  scaled by ``s[c]`` in the weight and its bias becomes ``b * s + t``. Conv: filter axis
  0; ConvTranspose: weight ``(C_in, C_out/group, k...)``, output channel ``g*n + j`` is
  ``W[block g, j]``; Gemm: column of ``B'`` (``transB``), ``C := beta*C*s + t`` and
  ``beta := 1`` (``C`` created when absent); MatMul with a constant 2-D weight only when
  its output has rank 2 (so BN's axis 1 is the weight's columns), the shift becoming a
  new ``Add``.
- before a Conv, exactly only when the Conv does not pad (pads all zero, ``auto_pad``
  NOTSET or VALID: a padded zero would not be scaled and shifted)::

      Conv(x*s + t, W, b) = Conv(x, W * s[ci], b + sum_{ci,k} W[o,ci,k] * t[ci])

  where ``ci`` runs over the input channels of ``o``'s group.

Must not: fold in training mode (``training_mode=1``, ``is_test=0``) or with ``spatial=0``,
when the running-statistics outputs are used, when any BN parameter, weight or bias is
not constant, when the linear op's output has other readers or is a graph output, when
``var + epsilon`` is not positive, or when a folded value would overflow the weight's
type (float16: 65504) or push a normal weight below the type's smallest normal (a huge
variance: subnormals keep fewer bits). Graph output names are kept (a folded op writes
BN's output). A BN nothing absorbs is left to ``decompose-batchnorm``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import (constant_array, is_graph_io, live_consumers, optional_input, producer, remove,
                                replace_uses)
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._channel_affine import Folded, LinearOp, cast_once, constant_values, linear_op, place
from fusekit.passes._fusion import is_default_domain

log = logging.getLogger(__name__)

Verdict = Match | Decline
PARAMS = ("scale", "B", "input_mean", "input_var")
DEFAULT_EPSILON = float(np.float32(1e-5))  # a FLOAT attribute: the schema's default is float32's 1e-5


def batchnorm_affine(graph: gs.Graph, node: gs.Node) -> tuple[np.ndarray, np.ndarray] | Decline:
    """(s, t) in float64 for an inference BatchNormalization, or why it is not one."""
    if int(node.attrs.get("training_mode", 0)):
        return Decline("training_mode=1: it normalizes with batch statistics")
    if "is_test" in node.attrs and not int(node.attrs["is_test"]):
        return Decline("is_test=0: it normalizes with batch statistics")
    if not int(node.attrs.get("spatial", 1)):
        return Decline("spatial=0: statistics per activation, not per channel")
    for extra in node.outputs[1:]:
        if extra.name and (live_consumers(extra) or is_graph_io(graph, extra)):
            return Decline(f"its statistics output {extra.name!r} is used")
    if len(node.inputs) != 5:
        return Decline(f"it has {len(node.inputs)} inputs, not 5")
    values = []
    for label, tensor in zip(PARAMS, node.inputs[1:]):
        value = constant_array(tensor)
        if value is None:
            return Decline(f"its {label} is not constant")
        if value.dtype.kind != "f":
            return Decline(f"its {label} is {value.dtype}")
        values.append(np.asarray(value, np.float64).reshape(-1))
    if len({v.size for v in values}) != 1:
        return Decline(f"its parameters have different sizes {[v.size for v in values]}")
    gamma, beta, mean, var = values
    denom = var + float(node.attrs.get("epsilon", DEFAULT_EPSILON))
    if not np.all(denom > 0):
        return Decline("var + epsilon is not positive everywhere")
    scale = gamma / np.sqrt(denom)
    return scale, beta - mean * scale


class FoldBatchNormPass(NodeRewritePass):
    """Fold inference BatchNormalization into an adjacent Conv, ConvTranspose, Gemm or MatMul."""

    name = "fold-batchnorm"
    stage = Stage.FUSION
    priority = 10
    ops = frozenset({"BatchNormalization"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Verdict:
        affine = batchnorm_affine(graph, node)
        if isinstance(affine, Decline):
            return affine
        return self.fold(graph, node, affine)

    def fold(self, graph: gs.Graph, node: gs.Node, affine: tuple[np.ndarray, np.ndarray]) -> Verdict:
        """The check once ``affine`` (:func:`batchnorm_affine`'s (s, t)) is known; also used by
        decompose-batchnorm, which has computed it already."""
        before = self._into_producer(graph, node, affine)
        if isinstance(before, Match):
            return before
        after = self._into_next_conv(graph, node, affine)
        if isinstance(after, Match):
            return after
        return Decline(f"{before.reason}; {after.reason}")

    def _into_producer(self, graph: gs.Graph, node: gs.Node, affine) -> Verdict:
        x = node.inputs[0]
        source = producer(x)
        op = linear_op(graph, source)
        if op is None:
            what = f"{source.op} {source.name!r}" if source is not None else "a graph input or constant"
            return Decline(f"its input comes from {what}, not Conv/ConvTranspose/Gemm/MatMul")
        where = f"{source.op} {source.name!r}"
        if is_graph_io(graph, x):
            return Decline(f"{where} output {x.name!r} is a graph output")
        if len(live_consumers(x)) != 1:
            return Decline(f"{where} output {x.name!r} has other consumers")
        problem = op.problem()
        if problem:
            return Decline(f"{where}: {problem}")
        rank, axis = op.output_layout()
        if rank is None or rank + axis != 1:
            shape = "unknown" if rank is None else f"rank {rank}"
            return Decline(f"{where} output channels are not on axis 1 (output {shape})")
        if op.channels != affine[0].size:
            return Decline(f"{where} has {op.channels} output channels, BatchNormalization {affine[0].size}")
        folded = op.fold(*affine)
        if isinstance(folded, Decline):
            return Decline(f"{where}: {folded.reason}")
        return Match(f"BatchNormalization folded into {where}", (op, folded))

    def _into_next_conv(self, graph: gs.Graph, node: gs.Node, affine) -> Verdict:
        y = node.outputs[0]
        readers = live_consumers(y)
        if is_graph_io(graph, y) or len(readers) != 1 or readers[0].op != "Conv" \
                or not is_default_domain(readers[0]):
            return Decline("its output is not read by exactly one Conv")
        conv = readers[0]
        where = f"Conv {conv.name!r}"
        if conv.inputs[0] is not y or any(t is y for t in conv.inputs[1:]):
            return Decline(f"it feeds {where} other than as its data input")
        auto_pad = conv.attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad not in ("NOTSET", "VALID"):
            return Decline(f"{where} pads its input (auto_pad={auto_pad})")
        if any(int(p) for p in conv.attrs.get("pads", [])):
            return Decline(f"{where} pads its input: padded zeros would not be scaled and shifted")
        op = LinearOp(graph, conv)
        problem = op.problem()
        if problem:
            return Decline(f"{where}: {problem}")
        groups = int(conv.attrs.get("group", 1))
        if op.weight_shape[1] * groups != affine[0].size:
            return Decline(f"{where} reads {op.weight_shape[1] * groups} channels, "
                           f"BatchNormalization has {affine[0].size}")
        folded = _fold_input_channels(graph, op, groups, *affine)
        if isinstance(folded, Decline):
            return Decline(f"{where}: {folded.reason}")
        return Match(f"BatchNormalization folded into the next {where}", (op, folded))

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        op, folded = match.data
        if op.node.inputs[0] is node.outputs[0]:  # the next Conv: it reads BN's input instead
            op.apply(folded)
            op.node.inputs[0] = node.inputs[0]
        else:
            replace_uses(graph, node.outputs[0], op.apply(folded))
        remove(node)


def _fold_input_channels(graph: gs.Graph, op: LinearOp, groups: int, scale: np.ndarray,
                         shift: np.ndarray) -> Folded | Decline:
    """``Conv(x*s + t)`` as a Conv of x: input channel ``ci`` of the weight times ``s[ci]``,
    the bias plus ``sum over (ci, k) of W[o, ci, k] * t[ci]`` (grouped: ``ci`` of o's group)."""
    w = op.weight.astype(np.float64)
    bias_in = optional_input(op.node, 2)
    bias = np.zeros(w.shape[0]) if bias_in is None else \
        constant_values(graph, bias_in).astype(np.float64).reshape(-1)
    bias = bias + (w * place(shift, w.shape, 1, groups)).sum(axis=tuple(range(1, w.ndim)))
    weight = w * place(scale, w.shape, 1, groups)
    for label, value, factor_of in (("weights", weight, w), ("bias", bias, None)):
        if isinstance(problem := cast_once(value, op.weight_dtype, factor_of), str):
            return Decline(f"the folded {label} {problem}")
    return Folded(weight, bias, op.weight_dtype)
