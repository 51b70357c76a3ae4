"""Decompose onnxruntime's ``com.microsoft`` contrib ops into standard ONNX ops.

TensorRT's parser looks a custom-domain op up as a plugin named after its op type, and
none of these has one. Each rewrite is the op's definition in onnxruntime's contrib-op
docs, written with default-domain ops (x is the input, plus ``bias`` where the op takes one):

- ``Gelu(x)``, ``BiasGelu(x, bias)``: g(x + bias), g(v) = v * (erf(v / sqrt 2) + 1) * 0.5
- ``FastGelu(x[, bias])``: v * (tanh(sqrt(2/pi) * (v + 0.044715 v^3)) + 1) * 0.5
  (both written as the canonical pattern fuse-gelu recognises)
- ``QuickGelu(x; alpha=1.702)``: x * Sigmoid(alpha * x)
- ``SkipLayerNormalization(x, skip, gamma[, beta[, bias]]; epsilon=1e-12)``:
  s = x + skip (+ bias); LayerNormalization(s, gamma, beta, axis=-1, epsilon); the
  optional 4th output (the sum) is s. Needs opset 17 (raised like fuse-layer-norm does).
- ``FusedConv(X, W[, B[, Z]]; activation, activation_params, conv attributes)``:
  act(Conv(X, W, B) + Z) for activation Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid.

Must not: rewrite when an output the rewrite does not compute is used (SkipLayerNorm's
mean and inverse standard deviation), for a non-float input, or for an activation or
attribute the op definition does not give a meaning to here.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import live_consumers, make_constant, optional_input, replace_uses
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._opset import opset_raise_blocker, raise_opset
from fusekit.passes._pattern import float_type, node, np_dtype, variable

Verdict = Match | Decline
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715
LAYER_NORM_OPSET = 17
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_ACTIVATIONS = {"Relu": 0, "Tanh": 0, "Sigmoid": 0, "LeakyRelu": 1, "Clip": 2, "HardSigmoid": 2}


class _Emit:
    """Collects the replacement nodes of one rewrite."""

    def __init__(self, graph: gs.Graph, root: gs.Node) -> None:
        self.graph, self.root = graph, root
        self.base = root.name or root.op
        self.dtype = np_dtype(root.inputs[0])
        self.nodes: list[gs.Node] = []

    def const(self, name: str, value) -> gs.Constant:
        return make_constant(self.graph, f"{self.base}_{name}", np.array(value, dtype=self.dtype))

    def op(self, kind: str, *inputs: gs.Tensor, like: gs.Tensor | None = None, **attrs) -> gs.Tensor:
        out = variable(self.graph, f"{self.base}/{kind}_output", like if like is not None else self.root.outputs[0])
        self.nodes.append(node(self.graph, kind, f"{self.base}/{kind}", list(inputs), [out], **attrs))
        return out


def _used(graph: gs.Graph, t: gs.Tensor) -> bool:
    return bool(t.name) and (bool(live_consumers(t)) or any(o is t for o in graph.outputs))


def _unused_outputs(graph: gs.Graph, n: gs.Node, first: int) -> str | None:
    for t in n.outputs[first:]:
        if _used(graph, t):
            return f"output {t.name!r} is used"
    return None


def _biased(e: _Emit, n: gs.Node) -> gs.Tensor:
    bias = optional_input(n, 1)
    return n.inputs[0] if bias is None else e.op("Add", n.inputs[0], bias)


def _erf_gelu(e: _Emit, v: gs.Tensor) -> gs.Tensor:
    inner = e.op("Erf", e.op("Div", v, e.const("sqrt2", SQRT_2)))
    return e.op("Mul", e.op("Mul", v, e.op("Add", inner, e.const("one", 1.0))), e.const("half", 0.5))


def _gelu(e: _Emit, n: gs.Node) -> list[gs.Tensor]:
    return [_erf_gelu(e, _biased(e, n))]


def _fast_gelu(e: _Emit, n: gs.Node) -> list[gs.Tensor]:
    v = _biased(e, n)
    poly = e.op("Add", v, e.op("Mul", e.const("cubic", CUBIC), e.op("Mul", v, e.op("Mul", v, v))))
    inner = e.op("Tanh", e.op("Mul", e.const("sqrt_2_over_pi", SQRT_2_OVER_PI), poly))
    return [e.op("Mul", e.op("Mul", v, e.op("Add", inner, e.const("one", 1.0))), e.const("half", 0.5))]


def _quick_gelu(e: _Emit, n: gs.Node) -> list[gs.Tensor]:
    x = n.inputs[0]
    alpha = float(n.attrs.get("alpha", 1.702))
    return [e.op("Mul", x, e.op("Sigmoid", e.op("Mul", x, e.const("alpha", alpha))))]


def _skip_layer_norm(e: _Emit, n: gs.Node) -> list[gs.Tensor]:
    s = e.op("Add", n.inputs[0], n.inputs[1])
    bias = optional_input(n, 4)
    if bias is not None:
        s = e.op("Add", s, bias)
    inputs = [s, n.inputs[2]] + ([n.inputs[3]] if optional_input(n, 3) is not None else [])
    raise_opset(e.graph, LAYER_NORM_OPSET)
    y = e.op("LayerNormalization", *inputs, axis=-1, epsilon=float(n.attrs.get("epsilon", 1e-12)))
    outs = [y]
    if len(n.outputs) > 3 and n.outputs[3].name:
        outs += [None, None, s]
    return outs


def _fused_conv(e: _Emit, n: gs.Node) -> list[gs.Tensor]:
    attrs = {k: n.attrs[k] for k in _CONV_ATTRS if k in n.attrs}
    y = e.op("Conv", *[t for t in n.inputs[:3] if t.name], **attrs)
    z = optional_input(n, 3)
    if z is not None:
        y = e.op("Add", y, z)
    act = n.attrs["activation"]
    params = [float(p) for p in n.attrs.get("activation_params", [])]
    if act == "LeakyRelu":
        return [e.op(act, y, alpha=params[0] if params else 0.01)]
    if act == "HardSigmoid":
        return [e.op(act, y, alpha=params[0], beta=params[1])]
    if act == "Clip":
        return [e.op(act, y, e.const("min", params[0]), e.const("max", params[1]))]
    return [e.op(act, y)]


def _check_skip_layer_norm(graph: gs.Graph, n: gs.Node) -> str | None:
    if len(n.inputs) < 3:
        return "gamma is missing"
    for t in n.outputs[1:3]:
        if _used(graph, t):
            return f"output {t.name!r} is used (LayerNormalization does not give the mean and inverse std dev)"
    if graph.opset < LAYER_NORM_OPSET:
        blocker = opset_raise_blocker(graph, LAYER_NORM_OPSET)
        if blocker:
            return f"LayerNormalization needs opset {LAYER_NORM_OPSET} and the opset cannot be raised: {blocker}"
    return None


def _check_fused_conv(graph: gs.Graph, n: gs.Node) -> str | None:
    act = n.attrs.get("activation")
    if act not in _ACTIVATIONS:
        return f"activation {act!r} is not one fusekit decomposes"
    if len(n.attrs.get("activation_params", [])) < _ACTIVATIONS[act] and act != "LeakyRelu":
        return f"activation {act} needs {_ACTIVATIONS[act]} activation_params"
    return _unused_outputs(graph, n, 1)


_Rule = tuple[Callable[[_Emit, gs.Node], list], Callable[[gs.Graph, gs.Node], str | None], str]
RULES: dict[str, _Rule] = {
    "Gelu": (_gelu, lambda g, n: None, "erf GELU"),
    "BiasGelu": (_gelu, lambda g, n: None if optional_input(n, 1) is not None else "bias is missing", "Add + erf GELU"),
    "FastGelu": (_fast_gelu, lambda g, n: None, "tanh GELU"),
    "QuickGelu": (_quick_gelu, lambda g, n: None, "x * Sigmoid(alpha * x)"),
    "SkipLayerNormalization": (_skip_layer_norm, _check_skip_layer_norm, "Add + LayerNormalization"),
    "FusedConv": (_fused_conv, _check_fused_conv, "Conv (+ Add) + activation"),
}


class DecomposeContribOpsPass(NodeRewritePass):
    """Rewrite com.microsoft Gelu/BiasGelu/FastGelu/QuickGelu/SkipLayerNormalization/FusedConv as standard ops."""

    name = "decompose-contrib-ops"
    stage = Stage.LEGALIZE
    priority = 10
    ops = frozenset(RULES)
    domains = frozenset({"com.microsoft"})

    def check(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Verdict:
        if float_type(node.inputs[0]) is None:
            return Decline("the input is not of a known float type")
        _, check, what = RULES[node.op]
        why = check(graph, node) if node.op in ("SkipLayerNormalization", "FusedConv") else \
            (check(graph, node) or _unused_outputs(graph, node, 1))
        if why:
            return Decline(why)
        return Match(f"com.microsoft.{node.op} decomposed into {what}")

    def rewrite(self, graph: gs.Graph, node: gs.Node, match: Match, ctx: PassContext) -> None:
        build = RULES[node.op][0]
        emit = _Emit(graph, node)
        outs = build(emit, node)
        graph.nodes.extend(emit.nodes)
        for old, new in zip(list(node.outputs), outs):
            if new is not None and _used(graph, old):
                if new.dtype is None:
                    new.dtype = old.dtype
                replace_uses(graph, old, new)
        node.inputs.clear()
        node.outputs.clear()
