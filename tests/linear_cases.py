"""Random linear ops (Conv, ConvTranspose, Gemm, MatMul) for the folding tests, and exact comparison.

``linear_ops`` draws one op with random shapes, groups, strides, dilations, pads, bias
and attributes; the test appends its own pattern and builds the model with ``model``.
Every shape is computed, declared, and checked by ``onnx.checker`` (full check), so a
wrong shape here fails loudly. The batch dim is ``N`` (1 and 3 at run time).

``assert_close`` runs both models, float16/float32 under onnxruntime (its optimizations
off) and float64 under ``onnx.reference`` (onnxruntime has no float64 Conv). Folding
reassociates roundings, so errors scale with the values, not with each element (an
element near 0 by cancellation of large terms carries the same absolute error):

- float32 and float64: ``max|got - expected| <= TOLERANCE[dtype] * max(1, max|expected|)``
  over each output (float32: the issue's 1e-5; float64: 1e-12, thousands of times its
  roundoff).
- float16: two float16 graphs each carry roundoff of their own intermediates, so the
  optimized one is compared with the float64 evaluation of the *original* graph under
  the classic first-order forward error bound ``|got - exact| <= k * u * M``: ``u`` =
  2**-11, ``M`` the optimized graph evaluated on absolute weights and inputs
  (``magnitude_model``: the sum of the absolute terms making each output, |W|·|x| + |b|
  for a Conv) and ``k`` the number of roundings in it (one per node output and per float
  constant). A correct fold errs by at most a few ``u * M`` (measured: under 2 for one
  op); a wrong one by O(M). This also catches constants cast to float16 more than once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose

from tests.helpers import run_ort

BATCH = "N"
BATCH_VALUES = (1, 3)
ONNX_TYPES = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float32): TensorProto.FLOAT,
              np.dtype(np.float64): TensorProto.DOUBLE}
DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
FLOAT16_UNIT = 2.0**-11  # unit roundoff
FLOAT16_TINY = 2.0**-24  # smallest subnormal
REPORT_ENV = "FUSEKIT_TEST_DIFFS"  # a file: append every measured difference as JSON lines


@dataclass
class Pattern:
    """A graph under construction: ``x`` (the input) -> nodes -> declared outputs."""

    dtype: np.dtype
    x_shape: tuple
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # extra graph inputs (name, dtype enum, shape)
    outputs: list = field(default_factory=list)  # (name, shape)
    count: int = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, values: np.ndarray, prefix: str = "c", dtype: np.dtype | None = None) -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(values).astype(dtype or self.dtype), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str | None = None, outputs: int = 1, **attrs) -> str:
        outs = [self.fresh(op.lower() + "_") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or self.fresh(op), **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, opset: int = 17) -> onnx.ModelProto:
        elem = ONNX_TYPES[self.dtype]
        inputs = [helper.make_tensor_value_info("x", elem, list(self.x_shape))]
        inputs += [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in self.inputs]
        outputs = [helper.make_tensor_value_info(n, elem, list(s)) for n, s in self.outputs]
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


@dataclass
class Linear:
    """A drawn linear op: its output tensor, shape, channel count and channel axis."""

    op: str
    out: str
    shape: tuple
    channels: int
    axis: int  # the output's channel axis (non-negative)
    weight: str


def values(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return rng.standard_normal(shape) * scale


def away_from_zero(rng: np.random.Generator, shape) -> np.ndarray:
    """Values in ±[0.5, 2]: safe divisors and scales."""
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


@st.composite
def patterns(draw, dtypes: Sequence[np.dtype] = DTYPES) -> tuple[Pattern, np.random.Generator]:
    dtype = draw(st.sampled_from(list(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return Pattern(dtype, ()), rng


def conv_out(size: int, k: int, stride: int, dil: int, pads: tuple[int, int], auto_pad: str) -> int:
    if auto_pad.startswith("SAME"):
        return -(-size // stride)
    return (size + pads[0] + pads[1] - (dil * (k - 1) + 1)) // stride + 1


@st.composite
def linear_ops(draw, p: Pattern, rng: np.random.Generator, ops: Sequence[str] = ("Conv", "ConvTranspose", "Gemm",
               "MatMul"), channel_axis_one: bool = False, constant_weights: bool = True, source: str = "x",
               padding: str = "any") -> Linear:
    """Append a random linear op reading ``source`` (shape: ``p.x_shape``, which it sets) to ``p``.

    ``channel_axis_one``: only ops whose output channels are on axis 1 (MatMul of rank 2).
    ``constant_weights=False``: the weight is a graph input instead of an initializer.
    ``padding``: a Conv/ConvTranspose pads ``"any"``-how, ``"none"`` (no pads, zero pads or
    VALID) or ``"some"`` (a nonzero pad or SAME_*).
    """
    op = draw(st.sampled_from(list(ops)))
    magnitude = draw(st.sampled_from([1.0, 1.0, 1.0, 50.0]))  # sometimes large values
    if op in ("Conv", "ConvTranspose"):
        return draw(_conv(p, rng, op, magnitude, constant_weights, source, padding))
    if op == "Gemm":
        return draw(_gemm(p, rng, magnitude, constant_weights, source))
    return draw(_matmul(p, rng, magnitude, channel_axis_one, constant_weights, source))


def _weight(p: Pattern, rng, shape, magnitude, constant: bool) -> str:
    if constant:
        return p.const(values(rng, shape, magnitude), "w")
    name = p.fresh("w_in")
    p.inputs.append((name, ONNX_TYPES[p.dtype], shape))
    return name


@st.composite
def _conv(draw, p: Pattern, rng, op: str, magnitude: float, constant: bool, source: str, padding: str) -> Linear:
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    group = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [draw(st.integers(1, 2)) for _ in range(dims)]
    dilations = [draw(st.integers(1, 2)) for _ in range(dims)]
    auto_pad = draw(st.sampled_from({"any": ["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"],
                                     "none": ["NOTSET", "NOTSET", "VALID"],
                                     "some": ["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER"]}[padding]))
    pads = [(draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) if auto_pad == "NOTSET" and padding != "none"
            else (0, 0) for k in kernel]
    if auto_pad.startswith("SAME"):  # onnxruntime: "Dilation not supported for AutoPadType::SAME_*"
        dilations = [1] * dims
    if padding == "some" and auto_pad == "NOTSET" and not any(b or e for b, e in pads):
        kernel[0] = max(kernel[0], 2)
        pads[0] = (1, pads[0][1])
    sizes = [draw(st.integers(1, 6 if dims < 3 else 4)) for _ in range(dims)]
    attrs = {"group": group, "strides": strides, "dilations": dilations}
    if auto_pad == "NOTSET" and (padding != "none" or draw(st.booleans())):
        attrs["pads"] = [b for b, _ in pads] + [e for _, e in pads]
    else:
        attrs["auto_pad"] = auto_pad
    if draw(st.booleans()):
        attrs["kernel_shape"] = kernel
    channels = group * cout_g
    if op == "Conv":
        sizes = [max(s, d * (k - 1) + 1 - b - e) for s, k, d, (b, e) in zip(sizes, kernel, dilations, pads)]
        spatial = [conv_out(s, k, st_, d, pd, auto_pad)
                   for s, k, st_, d, pd in zip(sizes, kernel, strides, dilations, pads)]
        w_shape = (channels, cin_g, *kernel)
    else:
        if auto_pad.startswith("SAME"):  # onnxruntime and the spec disagree on SAME for ConvTranspose
            attrs.pop("auto_pad")
        output_padding = [draw(st.integers(0, s - 1)) for s in strides]
        if any(output_padding):
            attrs["output_padding"] = output_padding
        spatial = [s_ * (n - 1) + op_ + d * (k - 1) + 1 - b - e
                   for n, k, s_, d, (b, e), op_ in zip(sizes, kernel, strides, dilations, pads, output_padding)]
        if any(s < 1 for s in spatial):
            attrs.pop("pads", None)
            spatial = [s_ * (n - 1) + op_ + d * (k - 1) + 1
                       for n, k, s_, d, op_ in zip(sizes, kernel, strides, dilations, output_padding)]
        w_shape = (group * cin_g, cout_g, *kernel)
    p.x_shape = (BATCH, group * cin_g, *sizes)
    w = _weight(p, rng, w_shape, magnitude, constant)
    inputs = [source, w]
    if draw(st.booleans()):
        inputs.append(p.const(values(rng, (channels,)), "bias"))
    out = p.node(op, inputs, **attrs)
    return Linear(op, out, (BATCH, channels, *spatial), channels, 1, w)


@st.composite
def _gemm(draw, p: Pattern, rng, magnitude: float, constant: bool, source: str) -> Linear:
    m = draw(st.sampled_from([BATCH, BATCH, 1, 2, 4]))
    k, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    attrs = {}
    if trans_a or draw(st.booleans()):
        attrs["transA"] = trans_a
    if trans_b or draw(st.booleans()):
        attrs["transB"] = trans_b
    for name in ("alpha", "beta"):
        if draw(st.booleans()):
            attrs[name] = draw(st.sampled_from([1.0, 0.5, -2.0, 0.0 if name == "beta" else 3.0]))
    c_shapes = [None, (n,), (1, n), (), (1,)] + ([(m, n), (m, 1)] if m != BATCH else [])
    c_shape = draw(st.sampled_from(c_shapes))
    p.x_shape = (k, m) if trans_a else (m, k)
    w = _weight(p, rng, (n, k) if trans_b else (k, n), magnitude, constant)
    inputs = [source, w] + ([p.const(values(rng, c_shape), "C")] if c_shape is not None else [])
    out = p.node("Gemm", inputs, **attrs)
    return Linear("Gemm", out, (m, n), n, 1, w)


@st.composite
def _matmul(draw, p: Pattern, rng, magnitude: float, rank_two: bool, constant: bool, source: str) -> Linear:
    rank = 2 if rank_two else draw(st.integers(1, 4))
    k, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    lead = [BATCH] + [draw(st.integers(1, 3)) for _ in range(rank - 2)] if rank >= 2 else []
    p.x_shape = (*lead, k)
    w = _weight(p, rng, (k, n), magnitude, constant)
    out = p.node("MatMul", [source, w])
    return Linear("MatMul", out, (*lead, n), n, rank - 1, w)


# ---------------------------------------------------------------- running and comparing

def feeds(model: onnx.ModelProto, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random inputs of the declared types, one set per batch value (one if no input has the batch dim)."""
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    batches = BATCH_VALUES if any(BATCH in d for d in dims) else BATCH_VALUES[:1]
    rng = np.random.default_rng(seed)
    out = []
    for b in batches:
        out.append({i.name: rng.standard_normal([b if d == BATCH else d for d in shape]).astype(
                    helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
                    for i, shape in zip(model.graph.input, dims)})
    return out


class ConvTranspose(_ReferenceConvTranspose):
    """onnx.reference's ConvTranspose, with groups done right: one group-1 run per group.

    (onnx 1.23 slices a grouped weight by output instead of input channels and adds the
    whole bias to each group.) ``test_reference_conv_transpose_matches_onnxruntime``
    checks this oracle against onnxruntime in float32.
    """

    def _run(self, X, W, B=None, group=None, **attrs):
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        biases = np.split(B, group) if B is not None else [None] * group
        parts = [super(ConvTranspose, self)._run(x, w, b, group=1, **attrs)[0]
                 for x, w, b in zip(np.split(X, group, axis=1), np.split(W, group, axis=0), biases)]
        return (np.concatenate(parts, axis=1),)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Outputs by name: onnx.reference for float64 (onnxruntime has no float64 Conv), else onnxruntime."""
    if dtype == np.float64:
        names = [o.name for o in model.graph.output]
        return dict(zip(names, ReferenceEvaluator(model, new_ops=[ConvTranspose]).run(None, feed)))
    return run_ort(model, feed)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computed in float64: float16/float32 initializers, inputs and outputs widened."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    narrow = (TensorProto.FLOAT16, TensorProto.FLOAT)
    for t in wide.graph.initializer:
        if t.data_type in narrow:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in [*wide.graph.input, *wide.graph.output]:
        if vi.type.tensor_type.elem_type in narrow:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    del wide.graph.value_info[:]
    return wide


def magnitude_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph on absolute values, in float64: each output bounds the sum of the absolute
    terms that make it (|W|·|x| + |b| for a Conv), which bounds its rounding error.

    None if the graph has an op this does not cover. (Sigmoid is covered only where it
    reads an exact value, a graph input: the tests put it nowhere else.)
    """
    wide = to_float64(model)
    for t in wide.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(t)), t.name))
    for node in wide.graph.node:
        if node.op_type == "Sub":
            node.op_type = "Add"
        elif node.op_type == "Gemm":
            for a in node.attribute:
                if a.name in ("alpha", "beta"):
                    a.f = abs(a.f)
        elif node.op_type not in MAGNITUDE_OPS:
            return None
    return wide


MAGNITUDE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Mul", "Div", "Add", "Relu", "Sigmoid"})


def assert_close(original: onnx.ModelProto, optimized: onnx.ModelProto, dtype: np.dtype,
                 feeds_list: list[dict[str, np.ndarray]] | None = None, label: str = "") -> float:
    """The optimized model computes what the original does, within the bounds above.

    Returns the largest difference seen: relative to the output's scale for float32 and
    float64, in units of ``u * M`` for float16.
    """
    worst = 0.0
    wide = to_float64(original) if dtype == np.float16 else None
    magnitude = magnitude_model(optimized) if dtype == np.float16 else None
    floats = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE)
    roundings = len(optimized.graph.node) + sum(t.data_type in floats for t in optimized.graph.initializer)
    for feed in feeds_list if feeds_list is not None else feeds(original):
        expected, got = run(original, feed, dtype), run(optimized, feed, dtype)
        assert list(got) == list(expected), f"outputs {list(expected)} became {list(got)}"
        if wide is not None:
            exact = run(wide, {k: v.astype(np.float64) for k, v in feed.items()}, np.dtype(np.float64))
            if magnitude is not None:
                bounds = run(magnitude, {k: np.abs(v.astype(np.float64)) for k, v in feed.items()},
                             np.dtype(np.float64))
        for name, e in expected.items():
            g = got[name]
            assert (e.shape, e.dtype) == (g.shape, g.dtype), f"{name}: {e.dtype}{e.shape} -> {g.dtype}{g.shape}"
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            assert np.array_equal(np.isnan(e64), np.isnan(g64)), f"{name}: NaN positions differ"
            ok = ~np.isnan(e64)
            if np.array_equal(e64, g64, equal_nan=True):
                diff = 0.0
            elif wide is None:
                finite = ok & np.isfinite(e64)
                assert np.array_equal(e64[~finite & ok], g64[~finite & ok]), f"{name}: infinities differ"
                scale = max(1.0, float(np.abs(e64[finite]).max(initial=0.0)))
                diff = float(np.abs(e64[finite] - g64[finite]).max(initial=0.0)) / scale
                assert diff <= TOLERANCE[dtype], \
                    f"{name} ({dtype}): max difference {diff * scale:.3g} on values up to {scale:.3g}"
            elif magnitude is None:  # an op the bound does not cover: only an unchanged output passes
                raise AssertionError(f"{name} (float16): outputs differ and the graph has ops without an error bound")
            else:
                x64, m64 = exact[name].astype(np.float64)[ok], bounds[name].astype(np.float64)[ok]
                units = np.abs(g64[ok] - x64) / (FLOAT16_UNIT * m64 + FLOAT16_TINY)
                diff = float(units.max(initial=0.0))
                i = int(units.argmax()) if units.size else 0
                assert diff <= roundings, \
                    (f"{name} (float16): error {abs(g64[ok][i] - x64[i]):.3g} against float64 is {diff:.3g} "
                     f"units of roundoff of terms summing to {m64[i]:.3g}, more than its {roundings} roundings")
            worst = max(worst, diff)
    if os.environ.get(REPORT_ENV):
        with open(os.environ[REPORT_ENV], "a") as f:
            f.write(json.dumps({"label": label, "dtype": str(dtype), "diff": worst}) + "\n")
    return worst
