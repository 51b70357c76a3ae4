"""fold-batchnorm and decompose-batchnorm: every inference BatchNormalization goes, exactly.

Property tests draw the pattern (tests/linear_cases.py: Conv/ConvTranspose of 1-3 spatial
dims with groups, strides, dilations, pads, auto_pad and bias; Gemm with transA/transB,
alpha, beta and every C shape; MatMul) in float16, float32 and float64, with random BN
parameters and epsilon, and compare before/after under onnxruntime (onnx.reference for
float64) at batch 1 and 3. Near misses must keep their BN under fold-batchnorm and say
why; decompose-batchnorm then turns those that are still plain inference BNs into
Mul+Add. Real models: the raw ResNet and MobileNet exports lose every BN under the
default pipeline and keep their outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from onnx import numpy_helper

from fusekit import registry
from tests.helpers import (assert_same_outputs, feeds_for, inspect_pass, op_counts, optimize_with, parse,
                           removed_by)
from tests.linear_cases import (BATCH, ONNX_TYPES, Pattern, assert_close, away_from_zero, feeds, linear_ops,
                                patterns, run, to_float64, values)
from tests.zoo_models import zoo_model

FOLD = ["fold-batchnorm", "infer-shapes"]
BOTH = ["fold-batchnorm", "decompose-batchnorm", "infer-shapes"]
PARAMS = ("scale", "B", "input_mean", "input_var")


def add_batchnorm(draw, p: Pattern, rng: np.random.Generator, source: str, channels: int, *,
                  name: str = "bn", param_input: str | None = None, **attrs) -> str:
    """``BatchNormalization(source)`` with random statistics (sometimes float32 ones for a
    float16 input, as opset 15 allows); ``param_input`` names a parameter fed as a graph input."""
    param_dtype = p.dtype if p.dtype != np.float16 or draw(st.booleans()) else np.dtype(np.float32)
    var = draw(st.sampled_from(["wide", "tiny"]))
    arrays = {"scale": values(rng, channels), "B": values(rng, channels), "input_mean": values(rng, channels),
              "input_var": rng.uniform(0.05, 3.0, channels) if var == "wide" else rng.uniform(1e-4, 1e-2, channels)}
    if p.dtype == np.float16 and var == "tiny":  # scales of 100 on weights of 50: near float16's range
        arrays["input_var"] = arrays["input_var"] + 0.05
    inputs = [source]
    for label in PARAMS:
        if label == param_input:
            name_in = p.fresh(label)
            p.inputs.append((name_in, ONNX_TYPES[np.dtype(param_dtype)], (channels,)))
            inputs.append(name_in)
        else:
            inputs.append(p.const(arrays[label], label, dtype=param_dtype))
    epsilon = draw(st.sampled_from([None, 1e-5, 1e-3, 0.1]))
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    outputs = 3 if attrs.get("training_mode") else 1
    out = p.node("BatchNormalization", inputs, name=name, outputs=outputs, **attrs)
    return out[0] if outputs > 1 else out


def finish(draw, p: Pattern, y: str, shape: tuple) -> None:
    """Make ``y`` a graph output, or read it with a Relu whose output is one."""
    if draw(st.booleans()):
        p.outputs.append((y, shape))
    else:
        p.outputs.append((p.node("Relu", [y]), shape))


# ---------------------------------------------------------------- folded after a linear op

@st.composite
def bn_after_linear(draw):
    p, rng = draw(patterns())
    lin = draw(linear_ops(p, rng, channel_axis_one=True))
    y = add_batchnorm(draw, p, rng, lin.out, lin.channels)
    finish(draw, p, y, lin.shape)
    return p.model(), p.dtype, lin.op


@given(bn_after_linear())
def test_batchnorm_after_linear_op_is_folded(case):
    model, dtype, op = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model, FOLD)
    note(onnx.printer.to_text(optimized.graph))
    counts = op_counts(optimized)
    assert counts["BatchNormalization"] == 0 and counts[op] == 1
    # MatMul has no bias: BN's shift becomes an Add
    assert len(optimized.graph.node) == len(model.graph.node) - (op != "MatMul")
    assert removed_by(report, "bn") == ["fold-batchnorm"]
    assert_close(model, optimized, dtype, label=f"bn-after-{op}")


# ---------------------------------------------------------------- folded into the next Conv

@st.composite
def bn_before_conv(draw):
    p, rng = draw(patterns())
    source = "x"
    relu_first = draw(st.booleans())
    conv_input = p.fresh("bn_in")  # placeholder; the Conv draws x's shape
    lin = draw(linear_ops(p, rng, ops=("Conv",), source=conv_input, padding="none"))
    conv = p.nodes.pop()
    if relu_first:
        source = p.node("Relu", ["x"])
    y = add_batchnorm(draw, p, rng, source, p.x_shape[1])
    conv.input[0] = y
    p.nodes.append(conv)
    finish(draw, p, lin.out, lin.shape)
    return p.model(), p.dtype


@given(bn_before_conv())
def test_batchnorm_before_unpadded_conv_is_folded(case):
    model, dtype = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model, FOLD)
    note(onnx.printer.to_text(optimized.graph))
    assert op_counts(optimized)["BatchNormalization"] == 0
    assert len(optimized.graph.node) == len(model.graph.node) - 1
    assert removed_by(report, "bn") == ["fold-batchnorm"]
    assert_close(model, optimized, dtype, label="bn-before-Conv")


# ---------------------------------------------------------------- standalone: Mul + Add

@st.composite
def standalone_bn(draw):
    p, rng = draw(patterns())
    rank = draw(st.integers(2, 5))
    channels = draw(st.integers(1, 4))
    p.x_shape = (BATCH, channels, *[draw(st.integers(1, 4)) for _ in range(rank - 2)])
    source = p.node(draw(st.sampled_from(["Relu", "Sigmoid"])), ["x"]) if draw(st.booleans()) else "x"
    y = add_batchnorm(draw, p, rng, source, channels)
    finish(draw, p, y, p.x_shape)
    return p.model(), p.dtype


@given(standalone_bn())
def test_standalone_batchnorm_becomes_mul_and_add(case):
    model, dtype = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model, BOTH)
    counts = op_counts(optimized)
    assert counts["BatchNormalization"] == 0 and counts["Mul"] == 1 and counts["Add"] == 1
    assert removed_by(report, "bn") == ["decompose-batchnorm"]
    assert_close(model, optimized, dtype, label="bn-standalone")


# ---------------------------------------------------------------- near misses

NEAR_MISSES = {
    # kind: (reason fold-batchnorm gives, whether decompose-batchnorm still removes the BN)
    "other-consumer": ("has other consumers", True),
    "graph-output": ("is a graph output", True),
    "weight-input": ("weights are not constant", True),
    "bias-input": ("not constant", True),
    "param-input": ("is not constant", False),
    "training": ("training_mode=1", False),
    "padded-next-conv": ("pads its input", True),
    "matmul-rank-3": ("not on axis 1", True),
}


@st.composite
def near_miss(draw):
    kind = draw(st.sampled_from(sorted(NEAR_MISSES)))
    p, rng = draw(patterns())
    attrs = {"training_mode": 1} if kind == "training" else {}
    param_input = draw(st.sampled_from(PARAMS[:3])) if kind == "param-input" else None
    if kind == "padded-next-conv":
        lin = draw(linear_ops(p, rng, ops=("Conv",), source="placeholder", padding="some"))
        conv = p.nodes.pop()
        conv.input[0] = add_batchnorm(draw, p, rng, "x", p.x_shape[1])
        p.nodes.append(conv)
        p.outputs.append((lin.out, lin.shape))
        return kind, p.model(), p.dtype
    if kind == "matmul-rank-3":
        p.x_shape = (BATCH, draw(st.integers(2, 4)), draw(st.integers(1, 4)))
        n = draw(st.integers(1, 4))
        out = p.node("MatMul", ["x", p.const(values(rng, (p.x_shape[2], n)), "w")])
        y = add_batchnorm(draw, p, rng, out, p.x_shape[1])
        p.outputs.append((y, (BATCH, p.x_shape[1], n)))
        return kind, p.model(), p.dtype
    ops = ("Conv", "ConvTranspose", "Gemm") if kind == "bias-input" else ("Conv", "ConvTranspose", "Gemm", "MatMul")
    lin = draw(linear_ops(p, rng, ops=ops, channel_axis_one=True, constant_weights=kind != "weight-input"))
    if kind == "bias-input":
        node = p.nodes[-1]
        bias = p.fresh("bias_in")
        shape = (lin.channels,)
        p.inputs.append((bias, ONNX_TYPES[p.dtype], shape))
        if len(node.input) > 2:
            node.input[2] = bias
        else:
            node.input.append(bias)
    y = add_batchnorm(draw, p, rng, lin.out, lin.channels, param_input=param_input, **attrs)
    p.outputs.append((y, lin.shape))
    if kind == "other-consumer":
        p.outputs.append((p.node("Sigmoid", [lin.out]), lin.shape))
    elif kind == "graph-output":
        p.outputs.append((lin.out, lin.shape))
    return kind, p.model(), p.dtype


@given(near_miss())
def test_near_miss_keeps_batchnorm_with_its_reason(case):
    kind, model, dtype = case
    reason, decomposed = NEAR_MISSES[kind]
    note(kind)
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model, FOLD)
    assert op_counts(optimized) == op_counts(model)
    assert "bn" not in {e.node for e in report.events}
    (finding,) = inspect_pass(model, "fold-batchnorm")["bn"]
    assert not finding.applies and reason in finding.message, finding.message
    assert_close(model, optimized, dtype, label=f"near-miss-{kind}")
    both, _ = optimize_with(model, BOTH)
    assert op_counts(both)["BatchNormalization"] == (0 if decomposed else 1)
    assert_close(model, both, dtype, label=f"near-miss-{kind}-decomposed")


# ---------------------------------------------------------------- by hand

def test_fold_into_conv_matches_the_formula_and_keeps_the_output_name():
    model = parse("g (float[N,2,3,3] x) => (float[N,2,3,3] y) <float[2,2,1,1] w = {1, 2, 3, 4}, "
                  "float[2] b = {0.5, -1}, float[2] s = {2, 0.5}, float[2] beta = {1, 0}, "
                  "float[2] mean = {0, 1}, float[2] var = {3, 0.25}> {\n"
                  " [conv] c = Conv(x, w, b)\n [bn] y = BatchNormalization<epsilon = 0.001>(c, s, beta, mean, var)\n}")
    optimized, report = optimize_with(model, FOLD)
    (conv,) = optimized.graph.node
    assert conv.op_type == "Conv" and list(conv.output) == ["y"]
    inits = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    scale = np.array([2, 0.5]) / np.sqrt(np.array([3, 0.25]) + float(np.float32(0.001)))
    w = np.array([1, 2, 3, 4], np.float64).reshape(2, 2, 1, 1)
    np.testing.assert_array_equal(inits[conv.input[1]], (w * scale[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(inits[conv.input[2]],
                                  ((np.array([0.5, -1]) - [0, 1]) * scale + [1, 0]).astype(np.float32))
    assert removed_by(report, "bn") == ["fold-batchnorm"]
    assert_same_outputs(model, optimized)


def test_float16_weights_are_computed_in_float64_and_cast_once():
    """Folded float16 weights equal float64 arithmetic rounded once, bit for bit; doing the
    same in float32 (or float16) rounds differently for some of them."""
    rng = np.random.default_rng(0)
    p = Pattern(np.dtype(np.float16), (BATCH, 8, 3, 3))
    w = values(rng, (64, 8, 3, 3)).astype(np.float16)
    conv = p.node("Conv", ["x", p.const(w, "w")], name="conv", pads=[1, 1, 1, 1])
    params = [away_from_zero(rng, 64), values(rng, 64), values(rng, 64), rng.uniform(0.01, 2, 64)]
    names = [p.const(v, label, dtype=np.float32) for v, label in zip(params, PARAMS)]
    p.outputs.append((p.node("BatchNormalization", [conv, *names], name="bn"), (BATCH, 64, 3, 3)))
    model = p.model()
    optimized, _ = optimize_with(model, FOLD)
    (conv_node,) = optimized.graph.node
    folded = numpy_helper.to_array(next(t for t in optimized.graph.initializer if t.name == conv_node.input[1]))
    gamma, _, _, var = (np.asarray(v, np.float32).astype(np.float64) for v in params)
    scale = gamma / np.sqrt(var + float(np.float32(1e-5)))
    once = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float16)
    np.testing.assert_array_equal(folded, once)
    scale32 = np.float32(gamma) / np.sqrt(np.float32(var) + np.float32(1e-5))
    assert np.any((w.astype(np.float32) * scale32[:, None, None, None]).astype(np.float16) != once)
    assert_close(model, optimized, np.dtype(np.float16))


def test_shared_weight_of_another_conv_is_left_alone():
    model = parse("g (float[N,2,4,4] x) => (float[N,2,4,4] y, float[N,2,4,4] z) <float[2,2,1,1] w = {1, 2, 3, 4}, "
                  "float[2] s = {2, 0.5}, float[2] beta = {1, 0}, float[2] mean = {0, 1}, float[2] var = {3, 0.25}> {\n"
                  " c = Conv(x, w)\n y = BatchNormalization(c, s, beta, mean, var)\n z = Conv(x, w)\n}")
    optimized, _ = optimize_with(model, FOLD)
    assert op_counts(optimized) == {"Conv": 2}
    assert_same_outputs(model, optimized)


def test_inspect_says_what_each_pass_does_to_each_batchnorm():
    model = parse("g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2,2,1,1] w = {1, 2, 3, 4}, "
                  "float[2] s = {2, 0.5}, float[2] beta = {1, 0}, float[2] mean = {0, 1}, float[2] var = {3, 0.25}> {\n"
                  " [conv] c = Conv(x, w)\n [after_conv] a = BatchNormalization(c, s, beta, mean, var)\n"
                  " [relu] r = Relu(a)\n"
                  " [standalone] b = BatchNormalization(r, s, beta, mean, var)\n g = Sigmoid(b)\n"
                  " [before_conv] d = BatchNormalization(g, s, beta, mean, var)\n"
                  " [conv2] e = Conv(d, w)\n y = Sigmoid(e)\n}")
    fold = {n: (f[0].applies, f[0].message) for n, f in inspect_pass(model, "fold-batchnorm").items()}
    assert fold == {
        "after_conv": (True, "BatchNormalization folded into Conv 'conv'"),
        "standalone": (False, "its input comes from Relu 'relu', not Conv/ConvTranspose/Gemm/MatMul; "
                              "its output is not read by exactly one Conv"),
        "before_conv": (True, "BatchNormalization folded into the next Conv 'conv2'"),
    }
    decompose = {n: (f[0].applies, f[0].message) for n, f in inspect_pass(model, "decompose-batchnorm").items()}
    assert decompose["standalone"] == (True, "BatchNormalization decomposed into a per-channel Mul and Add")
    assert not decompose["after_conv"][0] and decompose["after_conv"][1].startswith("fold-batchnorm removes it")
    optimized, report = optimize_with(model)
    assert op_counts(optimized)["BatchNormalization"] == 0
    assert [removed_by(report, n) for n in ("after_conv", "standalone", "before_conv")] == \
        [["fold-batchnorm"], ["decompose-batchnorm"], ["fold-batchnorm"]]
    assert_same_outputs(model, optimized)


def test_batchnorm_of_unknown_rank_stays():
    """Reshape to a shape read from an input: BN's input rank is unknown, so is the Mul's constant."""
    model = parse("g (float[N] x, int64[K] shape) => (float[M] y) <float[2] s = {1, 2}, float[2] b = {1, 2}, "
                  "float[2] m = {1, 2}, float[2] v = {1, 2}, int64[1] flat = {-1}> {\n"
                  " r = Reshape(x, shape)\n [bn] n = BatchNormalization(r, s, b, m, v)\n y = Reshape(n, flat)\n}")
    optimized, _ = optimize_with(model, BOTH)
    assert op_counts(optimized)["BatchNormalization"] == 1
    assert inspect_pass(model, "decompose-batchnorm")["bn"][0].message == "its input rank is unknown"
    x = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    assert_same_outputs(model, optimized, [{"x": x, "shape": np.array([2, 2, 3], np.int64)}])


def test_passes_are_registered_in_the_fusion_stage_and_on_by_default():
    found = registry.discover()
    chosen = [info.name for info in found.select()]
    for name in ("fold-batchnorm", "decompose-batchnorm"):
        assert name in chosen and found.passes[name].cls.stage.name == "FUSION"
    assert found.passes["fold-batchnorm"].cls.priority < found.passes["decompose-batchnorm"].cls.priority


@given(patterns(dtypes=[np.dtype(np.float32)]).flatmap(
    lambda pr: linear_ops(pr[0], pr[1], ops=("ConvTranspose",)).map(lambda lin: (pr[0], lin))))
def test_reference_conv_transpose_matches_onnxruntime(case):
    """The float64 oracle (onnx.reference with grouped ConvTranspose fixed) agrees with
    onnxruntime in float32, so float64 comparisons rest on a correct reference."""
    p, lin = case
    p.outputs.append((lin.out, lin.shape))
    model = p.model()
    note(onnx.printer.to_text(model.graph))
    for feed in feeds(model):
        ort = run(model, feed, np.dtype(np.float32))[lin.out].astype(np.float64)
        ref = run(to_float64(model), {k: v.astype(np.float64) for k, v in feed.items()}, np.dtype(np.float64))[lin.out]
        assert np.abs(ort - ref).max(initial=0) <= 1e-5 * max(1.0, np.abs(ref).max(initial=0))


# ---------------------------------------------------------------- real models

@pytest.mark.parametrize("name", ["resnet-tiny", "mobilenet"])
def test_zoo_model_loses_every_batchnorm_and_keeps_its_outputs(name):
    model = onnx.load(str(zoo_model(name)))
    before = op_counts(model)
    assert before["BatchNormalization"] > 0
    optimized, report = optimize_with(model)
    after = op_counts(optimized)
    assert after["BatchNormalization"] == 0 and after["Conv"] == before["Conv"]
    batches = feeds_for(model, (1, 3))
    assert [f["images"].shape[0] for f in batches] == [1, 3]
    assert_same_outputs(model, optimized, batches)
    assert_close(model, optimized, np.dtype(np.float32), batches, label=name)
    again, report = optimize_with(optimized)
    assert report.iterations == 1 and len(again.graph.node) == len(optimized.graph.node)


def test_fold_that_would_overflow_float16_is_declined():
    """Scales of 1/sqrt(1e-8) on weights of 1000: the folded weights pass float16's 65504."""
    rng = np.random.default_rng(0)
    p = Pattern(np.dtype(np.float16), (BATCH, 2, 3, 3))
    conv = p.node("Conv", ["x", p.const(np.full((2, 2, 1, 1), 1000.0), "w")], name="conv")
    params = [np.ones(2), values(rng, 2), np.full(2, 1000.0), np.array([1e-8, 1.0])]
    names = [p.const(v, label, dtype=np.float32) for v, label in zip(params, PARAMS)]
    p.outputs.append((p.node("BatchNormalization", [conv, *names], name="bn", epsilon=0.0), (BATCH, 2, 3, 3)))
    model = p.model()
    (finding,) = inspect_pass(model, "fold-batchnorm")["bn"]
    assert not finding.applies and "the folded weights overflow float16" in finding.message
    (finding,) = inspect_pass(model, "decompose-batchnorm")["bn"]
    assert not finding.applies and finding.message == "its shift would overflow float16"  # -1000 * 1e4
    optimized, _ = optimize_with(model, BOTH)
    assert op_counts(optimized) == op_counts(model)


def test_fold_that_would_make_normal_weights_subnormal_is_declined():
    """A variance of 1e8 scales float16 weights of 0.1 by 1e-4: 1e-5 is below float16's smallest
    normal (6.1e-5), where fewer bits are kept than ``Conv(x) * s`` keeps (issue 15)."""
    rng = np.random.default_rng(0)
    p = Pattern(np.dtype(np.float16), (BATCH, 2, 3, 3))
    conv = p.node("Conv", ["x", p.const(np.full((2, 2, 1, 1), 0.1), "w")], name="conv")
    params = [np.ones(2), values(rng, 2), np.zeros(2), np.array([1e8, 1.0])]
    names = [p.const(v, label, dtype=np.float32) for v, label in zip(params, PARAMS)]
    p.outputs.append((p.node("BatchNormalization", [conv, *names], name="bn"), (BATCH, 2, 3, 3)))
    model = p.model()
    (finding,) = inspect_pass(model, "fold-batchnorm")["bn"]
    assert not finding.applies and "the folded weights underflow float16" in finding.message, finding.message
    optimized, _ = optimize_with(model, ["fold-batchnorm", "infer-shapes"])
    assert op_counts(optimized) == op_counts(model)


def test_decompose_with_a_subnormal_scale_is_declined():
    """A variance of 1e10 gives float16 scales of 1e-5, below its smallest normal: ``x * s``
    would keep fewer bits than BatchNormalization computes with (issue 15)."""
    p = Pattern(np.dtype(np.float16), (BATCH, 2, 3, 3))
    params = [np.ones(2), np.zeros(2), np.zeros(2), np.array([1e10, 1.0])]
    names = [p.const(v, label, dtype=np.float32) for v, label in zip(params, PARAMS)]
    p.outputs.append((p.node("BatchNormalization", ["x", *names], name="bn"), (BATCH, 2, 3, 3)))
    (finding,) = inspect_pass(p.model(), "decompose-batchnorm")["bn"]
    assert not finding.applies and "its scale would underflow float16" in finding.message, finding.message
