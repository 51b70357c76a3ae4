"""fuse-layer-norm: the decomposed LayerNorm becomes one LayerNormalization, and nothing else does.

Property tests draw the pattern as torch.onnx writes it (opset 14 and 17, and 18 where
ReduceMean takes its axes as an input): rank 2-4, the last 1..rank-1 axes normalized,
epsilon, Pow(d, 2) (float or int exponent) or Mul(d, d), the Sub shared or written twice,
gamma/beta absent, exact, with leading 1s, scalar or graph inputs, commuted operands,
constants as initializers or Constant nodes, float32 and float16. The result must pass
onnx.checker (full) and match onnxruntime at N = 1 and 3 (float32: 1e-5, relative for large
values; float16: 4e-3). Near misses (wrong exponent, axes, epsilon, intermediates used
elsewhere or graph outputs) must stay and say why. Real models: the raw BERT-style encoder
and ConvNeXt exports get one LayerNormalization per nn.LayerNorm under the default pipeline.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from tests.fusion_helpers import (MAX_DIFF, Builder, check_fused, print_max_diffs,  # noqa: F401
                                  rewrites, zoo_feeds, zoo_modules, zoo_run)
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

PASSES = ["fuse-layer-norm", "infer-shapes"]
pytestmark = pytest.mark.usefixtures("print_max_diffs")
GAMMAS = ["none", "exact", "leading-ones", "scalar", "input"]
BETAS = ["none", "exact", "input"]


def draw_base(draw, defect: str | None = None):
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float16])))
    opset = draw(st.sampled_from([14, 17, 18]))
    rank = draw(st.integers(3 if defect in ("axes-not-last", "axes-differ") else 2, 4))
    k = draw(st.integers(1, rank - 2 if defect == "axes-differ" else rank - 1))
    dims = draw(st.lists(st.integers(3, 6), min_size=rank - 1, max_size=rank - 1))
    seed = draw(st.integers(0, 2**16 - 1))
    b = Builder(dtype, dims, opset, as_node=lambda i: bool((seed >> (i % 16)) & 1))
    return b, np.random.default_rng(seed), dtype, opset, rank, k, dims


def reduce_mean(b: Builder, t: str, axes: list[int], name: str | None = None) -> str:
    if b.opset >= 18:
        return b.op("ReduceMean", t, b.const(np.array(axes, np.int64), np.int64), name=name)
    return b.op("ReduceMean", t, axes=axes, name=name)


@st.composite
def layer_norms(draw, defect: str | None = None):
    """(model, dtype, opset, gamma kind, beta kind); ``defect`` makes a near miss."""
    b, rng, dtype, opset, rank, k, dims = draw_base(draw, defect)
    axes = list(range(rank - k, rank))
    if draw(st.booleans()):
        axes = [a - rank for a in axes]
    if defect == "axes-not-last":
        axes = [1]
    x = "x"
    if draw(st.booleans()):  # a non-zero mean
        x = b.op("Add", "x", b.const(rng.normal(0, 3, dims[-1])))
    m = reduce_mean(b, x, axes, name="mean")
    d = b.op("Sub", *((m, x) if defect == "mean-minus-x" else (x, m)))
    square = draw(st.sampled_from(["pow", "pow-int", "mul"]))
    if defect == "pow3":
        square = "pow"
    if square == "mul":
        sq = b.op("Mul", d, d)
    else:
        exponent = 3.0 if defect == "pow3" else 2.0
        sq = b.op("Pow", d, b.const(exponent) if square == "pow" else b.const(int(exponent), np.int64))
    var_axes = list(range(rank - k - 1, rank)) if defect == "axes-differ" else axes
    v = reduce_mean(b, sq, var_axes)
    eps = b.input([]) if defect == "eps-input" else b.const(draw(st.sampled_from([1e-5, 1e-6, 1e-12, 1e-3])))
    ve = b.op("Add", *((v, eps) if draw(st.booleans()) else (eps, v)))
    s = ve if defect == "no-sqrt" else b.op("Sqrt", ve)
    d2 = d if draw(st.booleans()) else b.op("Sub", *((m, x) if defect == "mean-minus-x" else (x, m)))
    y = b.op("Div", d2, s)
    norm_shape = dims[len(dims) - k:]
    gamma, beta = draw(st.sampled_from(GAMMAS)), draw(st.sampled_from(BETAS))
    if gamma != "none":
        value = {"exact": lambda: rng.normal(1, 0.5, norm_shape),
                 "leading-ones": lambda: rng.normal(1, 0.5, [1] * (rank - k) + norm_shape),
                 "scalar": lambda: np.array(rng.normal(1, 0.5))}.get(gamma)
        g = b.input(norm_shape) if gamma == "input" else b.const(value())
        y = b.op("Mul", *((y, g) if draw(st.booleans()) else (g, y)))
    if beta != "none":
        t = b.input(norm_shape) if beta == "input" else b.const(rng.normal(0, 0.5, norm_shape))
        y = b.op("Add", *((y, t) if draw(st.booleans()) else (t, y)))
    b.output(y)
    extra = {"mean-output": m, "var-output": v}.get(defect)
    if extra:
        b.output(extra)
    if defect == "centred-read":
        b.output(b.op("Relu", d))
    return b.model(), dtype, opset, gamma, beta


@given(layer_norms())
def test_layer_norm_pattern_is_fused(case):
    model, dtype, opset, gamma, beta = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = check_fused(model, PASSES, dtype, "layer-norm")
    note(onnx.printer.to_text(optimized.graph))
    counts = op_counts(optimized)
    assert counts["LayerNormalization"] == 1, counts
    assert not {"ReduceMean", "Pow", "Sqrt", "Div", "Sub"} & set(counts), counts
    assert counts["Mul"] == 0 and counts["Add"] == op_counts(model)["Add"] - 1 - (beta != "none"), counts
    (ln,) = [n for n in optimized.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln.input) == (3 if beta != "none" else 2)
    assert optimized.opset_import[0].version == max(opset, 17)
    assert optimized.ir_version >= 8
    assert rewrites(report, "fuse-layer-norm") == 1


NEAR_MISSES = {
    "pow3": "raised to 3",
    "axes-not-last": "not the last axes",
    "axes-differ": "the variance reduces axes",
    "mean-minus-x": "not only subtracted",
    "eps-input": "non-negative scalar constant epsilon",
    "no-sqrt": "not divided by sqrt",
    "mean-output": "is a graph output",
    "var-output": "is a graph output",
    "centred-read": "is also read by Relu",
}


@given(st.sampled_from(sorted(NEAR_MISSES)).flatmap(lambda d: st.tuples(st.just(d), layer_norms(d))))
def test_near_miss_is_kept_with_its_reason(case):
    defect, (model, dtype, opset, gamma, beta) = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = check_fused(model, PASSES, dtype, "layer-norm near miss")
    assert op_counts(optimized)["LayerNormalization"] == 0
    assert op_counts(optimized)["ReduceMean"] == 2
    assert optimized.opset_import[0].version == opset
    (finding,) = inspect_pass(model, "fuse-layer-norm")["mean"]
    assert not finding.applies and NEAR_MISSES[defect] in finding.message, finding.message


# ---------------------------------------------------------------- fixed cases

LN_BODY = """
    [mean] m = ReduceMean<axes = [-1]>(x)
    d = Sub(x, m)
    sq = Pow(d, two)
    [var] v = ReduceMean<axes = [-1]>(sq)
    ve = Add(v, eps)
    s = Sqrt(ve)
    n = Div(d, s)
"""
LN_INITS = "float two = {2.0}, float eps = {1e-5}"


def ln_model(opset: int, body: str = "y = Identity(n)", inputs: str = "float[N,4,6] x",
             inits: str = LN_INITS, outputs: str = "float[N,4,6] y") -> onnx.ModelProto:
    ir = 7 if opset < 17 else 8
    return parse(f'<ir_version: {ir}, opset_import: ["" : {opset}]>\n'
                 f"g ({inputs}) => ({outputs}) <{inits}> {{{LN_BODY} {body}\n}}")


def test_without_affine_gets_a_scale_of_ones_and_the_variance_explains_itself():
    model = ln_model(17)
    findings = inspect_pass(model, "fuse-layer-norm")
    assert findings["mean"][0].applies and findings["mean"][0].message == \
        "LayerNormalization over the last 1 axes (epsilon 1e-05, no affine) replaces 7 nodes"
    assert not findings["var"][0].applies and "variance of a LayerNorm pattern" in findings["var"][0].message
    optimized, _ = optimize_with(model, PASSES)
    ln = [n for n in optimized.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln) == 1 and len(ln[0].input) == 2
    scale = {t.name: t for t in optimized.graph.initializer}[ln[0].input[1]]
    assert onnx.numpy_helper.to_array(scale).tolist() == [1.0] * 6
    assert {a.name: onnx.helper.get_attribute_value(a) for a in ln[0].attribute} == \
        {"axis": -1, "epsilon": pytest.approx(1e-5)}
    assert_same_outputs(model, optimized, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 14, 16])
def test_lower_opset_is_raised_to_17_with_ir_8_and_names_kept(opset):
    model = ln_model(opset)
    optimized, report = optimize_with(model, PASSES)
    assert (optimized.ir_version, optimized.opset_import[0].version) == (8, 17)
    assert op_counts(optimized) == {"LayerNormalization": 1, "Identity": 1}
    assert [o.name for o in optimized.graph.output] == ["y"]
    (finding,) = inspect_pass(model, "fuse-layer-norm")["mean"]
    assert finding.message.endswith(f"opset raised {opset} -> 17")
    assert_same_outputs(model, optimized, rtol=1e-5, atol=1e-5)


ROI = "r = RoiAlign<output_height = 1, output_width = 1>(x4, rois, idx)"
BN9 = "r, bm, bv, sm, sv = BatchNormalization(x4, sc, sc, sc, sc)"


@pytest.mark.parametrize("opset,extra,inits,reason", [
    (12, "", "", "ReduceMean changed meaning in opset 13"),
    (14, ROI, ", float[1,4] rois = {0, 0, 1, 1}, int64[1] idx = {0}", "RoiAlign changed meaning in opset 16"),
    (13, BN9, ", float[4] sc = {1, 1, 1, 1}", "BatchNormalization changed meaning in opset 14"),
], ids=["opset-12", "roialign", "training-batchnorm"])
def test_opset_is_not_raised_when_another_node_would_change_meaning(opset, extra, inits, reason):
    inputs = "float[N,4,6] x, float[1,4,2,2] x4" if extra else "float[N,4,6] x"
    outputs = "float[N,4,6] y" + (", float[1,4,?,?] r" if extra else "")
    model = ln_model(opset, "y = Identity(n)\n " + extra, inputs=inputs, inits=LN_INITS + inits, outputs=outputs)
    (finding,) = inspect_pass(model, "fuse-layer-norm")["mean"]
    assert not finding.applies and reason in finding.message, finding.message
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["LayerNormalization"] == 0
    assert optimized.opset_import[0].version == opset


def test_raising_can_be_turned_off():
    model = ln_model(14)
    (finding,) = inspect_pass(model, "fuse-layer-norm", options={"layer_norm_raise_opset": False})["mean"]
    assert not finding.applies and "layer_norm_raise_opset is off" in finding.message
    optimized, _ = optimize_with(model, PASSES, options={"layer_norm_raise_opset": False})
    assert op_counts(optimized)["LayerNormalization"] == 0 and optimized.opset_import[0].version == 14


def test_float64_and_dynamic_normalized_dims_decline():
    model = ln_model(17, inputs="double[N,4,6] x", inits="double two = {2.0}, double eps = {1e-5}",
                     outputs="double[N,4,6] y")
    assert "float64" in inspect_pass(model, "fuse-layer-norm")["mean"][0].message
    model = ln_model(17, inputs="float[N,4,M] x", outputs="float[N,4,M] y")
    (finding,) = inspect_pass(model, "fuse-layer-norm")["mean"]
    assert not finding.applies and "not static" in finding.message


def test_gamma_that_broadcasts_over_other_axes_stays_a_mul():
    """gamma [4, 1] scales rows, not the normalized axis: LayerNormalization without it."""
    model = ln_model(17, "y = Mul(n, g)", inits=LN_INITS + ", float[4,1] g = {1, 2, 3, 4}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"LayerNormalization": 1, "Mul": 1}
    assert_same_outputs(model, optimized, rtol=1e-5, atol=1e-5)


ALL_AXES = """
    [mean] m = ReduceMean(x)
    d = Sub(x, m)
    sq = Pow(d, two)
    v = ReduceMean(sq)
    ve = Add(v, eps)
    s = Sqrt(ve)
    n = Div(d, s)
"""


@pytest.mark.parametrize("gamma,fused", [("x", True), ("d", False)])
def test_reduction_over_every_axis_takes_a_tensor_gamma_but_not_a_pattern_intermediate(gamma, fused):
    """Over all axes gamma may have x's own shape; (x - mean) has it too, but is computed
    inside the pattern, so the Mul keeps it and the pattern cannot go."""
    model = parse('<ir_version: 8, opset_import: ["" : 17]>\n'
                  f"g (float[4,6] x) => (float[4,6] y) <{LN_INITS}> {{{ALL_AXES} y = Mul(n, {gamma})\n}}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["LayerNormalization"] == fused
    (finding,) = inspect_pass(model, "fuse-layer-norm")["mean"]
    assert finding.applies == fused
    if not fused:
        assert "intermediate 'd' is also read by Mul" in finding.message
    assert_same_outputs(model, optimized, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- real models

@pytest.mark.parametrize("name", ["encoder-tiny", "convnext"])
def test_real_models_get_one_layer_normalization_per_layer_norm_module(name):
    original, optimized, report, worst = zoo_run(name)
    layer_norms = zoo_modules(name, "LayerNorm")
    assert layer_norms == {"encoder-tiny": 1 + 2 * 2, "convnext": 3 * 2 + 1}[name]
    before, after = op_counts(original), op_counts(optimized)
    assert after["LayerNormalization"] == layer_norms
    assert rewrites(report, "fuse-layer-norm") == layer_norms
    # Each pattern had two ReduceMeans, a Pow and a Sqrt; none of them is left (other
    # passes may remove more, e.g. the attention scale's Pow).
    assert after["ReduceMean"] <= before["ReduceMean"] - 2 * layer_norms
    assert after["Pow"] <= before["Pow"] - layer_norms and after["Sqrt"] == 0
    assert not any(f.applies for fs in inspect_pass(optimized, "fuse-layer-norm").values() for f in fs)
    assert optimized.opset_import[0].version == 17
    MAX_DIFF[f"{name} (default pipeline)"] = worst


def test_opset_18_export_converted_from_14_fuses_too():
    """onnx's version converter turns the raw opset-14 encoder into opset 18 (ReduceMean
    axes as inputs): the pass matches that spelling on a real graph as well."""
    from onnx import version_converter

    original = zoo_run("encoder-tiny")[0]
    converted = version_converter.convert_version(original, 18)
    optimized, _ = optimize_with(converted)
    assert op_counts(optimized)["LayerNormalization"] == 5 and op_counts(optimized)["ReduceMean"] == 0
    assert_same_outputs(converted, optimized, zoo_feeds("encoder-tiny"), rtol=1e-4, atol=1e-5)
