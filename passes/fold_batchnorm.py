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
variance: subnormals keep fewer bits); or into a Conv whose output reaches a squeeze-excite
mean or a Concat of Conv branches (``_kept_scale_shift.scale_shift_stays``), where the Mul and
Add decompose-batchnorm writes are what TensorRT fuses best. Graph output names are kept (a folded op writes
BN's output). A BN nothing absorbs is left to ``decompose-batchnorm``.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from fusekit.passes._batchnorm import batchnorm_affine, fold_into_neighbour

from fusekit.graph_edit import remove, replace_uses
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage

Verdict = Match | Decline


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
        return fold_into_neighbour(graph, node, affine)

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        op, folded = match.data
        if op.node.inputs[0] is node.outputs[0]:  # the next Conv: it reads BN's input instead
            op.apply(folded)
            op.node.inputs[0] = node.inputs[0]
        else:
            replace_uses(graph, node.outputs[0], op.apply(folded))
        remove(node)
