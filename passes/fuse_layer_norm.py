"""Fuse the decomposed layer normalization into one ``LayerNormalization`` node.

Below opset 17 ONNX has no LayerNormalization, so ``torch.onnx.export`` writes
``nn.LayerNorm`` over the last k axes A of x as

    m  = ReduceMean<axes=A, keepdims=1>(x)
    d  = Sub(x, m)                        the Div may read a second, identical Sub(x, m)
    v  = ReduceMean<axes=A, keepdims=1>(Pow(d, 2))        or Mul(d, d)
    n  = Div(d, Sqrt(Add(v, eps)))
    y  = Add(Mul(n, gamma), beta)         optional: both, only one, or neither

which is y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta (biased variance): exactly
``LayerNormalization<axis=-k, epsilon=eps>(x, gamma, beta)`` (gamma = ones when absent; a
constant gamma/beta that broadcasts over the normalized axes only is expanded to their
shape). Commuted operands are matched too. Statistics are computed in float32
(``stash_type`` 1): equal up to rounding for float32, more accurate for float16.

The rewrite needs opset 17: below it the model's default-domain opset is raised to 17 (IR
version 8) when no other node changes meaning between the two opsets (``passes/_opset.py``);
option ``layer_norm_raise_opset: False`` leaves such models as they are.

Must not rewrite when: the two reductions are not over the same last axes of x or do
not keep dims; the exponent is not exactly 2; eps is not a non-negative scalar constant;
any intermediate (mean, centred x, variance, ...) is read outside the pattern or is a
graph output; gamma/beta would broadcast over other axes or have another dtype; x is
float64 (the statistics would drop to float32) or its rank/type is unknown; the opset is
below 17 and cannot be raised.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, live_consumers, make_constant, onnx_type, producer, type_name
from fusekit.onnx_nodes import is_default_domain
from fusekit.pass_infra import Decline, Match, NodeRewritePass, Option, PassContext, Stage
from fusekit.passes._opset import opset_raise_blocker, raise_opset
from fusekit.passes._pattern import (consumer, escaping, float_type, node, np_dtype, only_consumer, op_of, other_input,
                                     rank_of, replace_pattern, scalar_operand, variable)

OPSET = 17
RAISE_OPSET = Option("layer_norm_raise_opset", bool, True, "Raise the model's opset to 17 to fuse LayerNormalization "
                     "(when no node's meaning changes).")
Verdict = Match | Decline


def _reduce_axes(reduce: gs.Node, rank: int) -> tuple[set[int] | None, str]:
    """The normalized axes a ReduceMean reduces over (None, why: when not a plain keepdims mean)."""
    if reduce.attrs.get("keepdims", 1) != 1:
        return None, f"{reduce.name!r} does not keep dims"
    if "axes" in reduce.attrs:
        axes = reduce.attrs["axes"]
    elif len(reduce.inputs) > 1 and reduce.inputs[1].name:
        axes = constant_array(reduce.inputs[1])
        if axes is None:
            return None, f"{reduce.name!r} reads its axes from a non-constant input"
    else:
        if reduce.attrs.get("noop_with_empty_axes", 0):
            return None, f"{reduce.name!r} has no axes and noop_with_empty_axes: it reduces nothing"
        axes = range(rank)
    normalized = {int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).ravel()}
    if any(not 0 <= a < rank for a in normalized):
        return None, f"{reduce.name!r} has axes out of range"
    return normalized, ""


def _affine(tensor: gs.Tensor, x: gs.Tensor, norm_shape: tuple, dtype: np.dtype, pattern: list[gs.Node]):
    """gamma/beta as LayerNormalization takes it (shape ``norm_shape``), or None if ``tensor``
    is not one: returns the tensor itself or a NumPy array to store as a new constant."""
    if onnx_type(tensor.dtype) != onnx_type(x.dtype):
        return None
    rank, k = len(x.shape), len(norm_shape)
    value = constant_array(tensor)
    if value is None:
        same = tensor.shape is not None and tuple(tensor.shape) == tuple(norm_shape)
        inside = any(producer(tensor) is n for n in pattern)  # e.g. (x - mean) itself when k = rank
        return tensor if same and not inside else None
    if value.ndim > rank or any(d != 1 for d in value.shape[:max(value.ndim - k, 0)]):
        return None
    if any(not isinstance(d, (int, np.integer)) for d in norm_shape):
        return None
    if tuple(value.shape) == tuple(norm_shape):
        return tensor
    try:
        return np.ascontiguousarray(np.broadcast_to(value.reshape(value.shape[max(value.ndim - k, 0):]), norm_shape),
                                    dtype=dtype)
    except ValueError:
        return None


def _is_centred_square(t: gs.Tensor) -> bool:
    square = op_of(t, "Pow", "Mul")
    if square is None or (square.op == "Mul" and square.inputs[0] is not square.inputs[1]):
        return False
    sub = op_of(square.inputs[0], "Sub")
    return sub is not None and op_of(sub.inputs[1], "ReduceMean") is not None


class FuseLayerNormPass(NodeRewritePass):
    """Fuse decomposed layer normalization (ReduceMean ... Sqrt, Div) into LayerNormalization."""

    name = "fuse-layer-norm"
    stage = Stage.FUSION
    priority = 10
    ops = frozenset({"ReduceMean"})

    options = (RAISE_OPSET,)

    def start(self, graph: gs.Graph, ctx: PassContext) -> None:
        self._blocker: dict[int, str | None] = {}  # opset-raise verdict, computed once per run

    def _opset_problem(self, graph: gs.Graph, ctx: PassContext) -> str | None:
        if graph.opset >= OPSET:
            return None
        if not ctx.get(RAISE_OPSET):
            return f"needs opset {OPSET}; the model has {graph.opset} and layer_norm_raise_opset is off"
        if id(graph) not in self._blocker:
            self._blocker[id(graph)] = opset_raise_blocker(graph, OPSET)
        blocker = self._blocker[id(graph)]
        if blocker is None:
            return None
        return f"needs opset {OPSET}; raising it from {graph.opset} is unsafe: {blocker}"

    def check(self, graph: gs.Graph, mean: gs.Node, ctx: PassContext) -> Verdict:
        x = mean.inputs[0]
        if _is_centred_square(x):
            return Decline("reduces (x - mean)^2: the variance of a LayerNorm pattern is matched from its mean")
        rank = rank_of(x)
        if rank is None or x.dtype is None:
            return Decline("the input's rank or type is unknown")
        dtype = float_type(x)
        if dtype is None:
            return Decline(f"input type {type_name(onnx_type(x.dtype))} is not a float type")
        if type_name(dtype) == "float64":
            return Decline("float64 input: LayerNormalization computes its statistics in float32 at most")
        axes, why = _reduce_axes(mean, rank)
        if axes is None:
            return Decline(why)
        k = len(axes)
        if k == 0 or axes != set(range(rank - k, rank)):
            return Decline(f"reduces axes {sorted(axes)}, not the last axes of a rank-{rank} input")
        m = mean.outputs[0]
        subs = live_consumers(m)
        if not subs or any(s.op != "Sub" or not is_default_domain(s) or s.inputs[0] is not x or s.inputs[1] is not m
                           for s in subs):
            return Decline("the mean is not only subtracted from the input (x - mean)")
        centred = [s.outputs[0] for s in subs]
        squares, divs = [], []
        for d in centred:
            for user in {id(u): u for u in live_consumers(d)}.values():  # Mul(d, d) is listed twice
                if user.op == "Pow" and user.inputs[0] is d:
                    squares.append(user)
                elif user.op == "Mul" and user.inputs[0] is d and user.inputs[1] is d:
                    squares.append(user)
                elif user.op == "Div" and user.inputs[0] is d:
                    divs.append(user)
        if len(squares) != 1 or len(divs) != 1:
            return Decline("x - mean is not squared once and divided once (not a LayerNorm pattern)")
        square, div = squares[0], divs[0]
        if square.op == "Pow":
            exponent = scalar_operand(square.inputs[1], rank, kinds="fiu")
            if exponent != 2.0:
                return Decline(f"the centred input is raised to {exponent if exponent is not None else 'a non-constant'}"
                               ", not 2")
        var_mean = consumer(square.outputs[0], "ReduceMean")
        if var_mean is None:
            return Decline("the square is not averaged by a ReduceMean")
        var_axes, why = _reduce_axes(var_mean, rank)
        if var_axes != axes:
            return Decline(why or f"the variance reduces axes {sorted(var_axes)}, the mean {sorted(axes)}")
        add_eps = consumer(var_mean.outputs[0], "Add")
        eps = None
        if add_eps is not None:
            other = add_eps.inputs[1] if add_eps.inputs[0] is var_mean.outputs[0] else add_eps.inputs[0]
            eps = scalar_operand(other, rank)
        if eps is None or eps < 0:
            return Decline("the variance is not increased by a non-negative scalar constant epsilon")
        sqrt = consumer(add_eps.outputs[0], "Sqrt")
        if sqrt is None or div.inputs[1] is not sqrt.outputs[0]:
            return Decline("x - mean is not divided by sqrt(variance + epsilon)")
        nodes = [mean, *subs, square, var_mean, add_eps, sqrt, div]
        out = div.outputs[0]
        norm_shape = tuple(x.shape[rank - k:])
        np_type = np_dtype(x)
        gamma = beta = None
        mul = only_consumer(out, "Mul")
        if mul is not None and other_input(mul, out) is not None:
            gamma = _affine(other_input(mul, out), x, norm_shape, np_type, nodes)
            if gamma is not None:
                nodes.append(mul)
                out = mul.outputs[0]
        add = only_consumer(out, "Add")
        if add is not None and other_input(add, out) is not None:
            beta = _affine(other_input(add, out), x, norm_shape, np_type, nodes)
            if beta is not None:
                nodes.append(add)
                out = add.outputs[0]
        leak = escaping(graph, nodes, out)
        if leak:
            return Decline(leak)
        if gamma is None and any(not isinstance(d, (int, np.integer)) for d in norm_shape):
            return Decline(f"normalized dims {list(norm_shape)} are not static: no scale of ones can be made")
        problem = self._opset_problem(graph, ctx)
        if problem:
            return Decline(problem)
        parts = [p for p, v in (("gamma", gamma), ("beta", beta)) if v is not None]
        raised = f"; opset raised {graph.opset} -> {OPSET}" if graph.opset < OPSET else ""
        message = (f"LayerNormalization over the last {k} axes (epsilon {eps:g}"
                   f"{', ' + ' and '.join(parts) if parts else ', no affine'}) replaces {len(nodes)} nodes{raised}")
        return Match(message, dict(x=x, nodes=nodes, out=out, k=k, eps=eps, gamma=gamma, beta=beta,
                                   norm_shape=norm_shape, dtype=np_type))

    def rewrite(self, graph: gs.Graph, mean: gs.Node, match: Match, ctx: PassContext) -> None:
        data = match.data
        raise_opset(graph, OPSET)
        base = mean.name.removesuffix("ReduceMean").rstrip("/_") or "layer_norm"
        inputs = [data["x"], self._tensor(graph, data["gamma"], f"{base}_scale",
                                          np.ones(data["norm_shape"], data["dtype"]))]
        if data["beta"] is not None:
            inputs.append(self._tensor(graph, data["beta"], f"{base}_bias", None))
        out = variable(graph, f"{base}_LayerNormalization_output", data["out"])
        ln = node(graph, "LayerNormalization", f"{base}/LayerNormalization", inputs, [out],
                  axis=-data["k"], epsilon=float(data["eps"]))
        replace_pattern(graph, data["nodes"], data["out"], [ln], out)

    @staticmethod
    def _tensor(graph: gs.Graph, value, name: str, default: np.ndarray | None) -> gs.Tensor:
        if value is None:
            return make_constant(graph, name, default)
        if isinstance(value, np.ndarray):
            return make_constant(graph, name, value)
        return value
