"""fuse-activations: HardSigmoid, HardSwish and Mish forms become their ops; SiLU is reported.

Property tests draw each form (Clip(a*x + b, 0, hi) * 1/hi with the scale as Mul or Div
and an optional pre-scale; x * Clip(x + 3, 0, 6) / 6; x * (Clip(...) / 6); x *
HardSigmoid(x); x * tanh(softplus(x)); x * Sigmoid(x); commuted operands, constants as
initializers or Constant nodes, Clip bounds as inputs or, at opset 10, attributes) in
float32 and float16 at opsets 10-18, and compare under onnxruntime at N = 1 and 3
(float32: 1e-5, relative for large values; float16: 4e-3) after onnx.checker (full). The
target op must appear only where the opset has it. Near misses (bounds, scale, alpha,
another tensor in place of x, an intermediate used elsewhere) must stay and say why.
A HardSwish in any form (op, x * HardSigmoid(x), the Clip forms, a pre-scaled x) read only
by ReduceMean/ReduceSum/ReduceMax/GlobalAveragePool becomes x * Clip(x + 3, 0, 6) / 6 and
stays so, compared the same way (opsets 10-18, float32 and float16).
Real model: the raw MobileNet export keeps its ReLU6 Clips and its 6 HardSwish in the
body; the head's, read by ReduceMean, becomes the Clip form.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from tests.fusion_helpers import MAX_DIFF, Builder, check_fused, print_max_diffs, rewrites, zoo_run  # noqa: F401
from tests.helpers import inspect_pass, op_counts, parse

PASSES = ["fuse-activations", "infer-shapes"]
pytestmark = pytest.mark.usefixtures("print_max_diffs")
FORMS = ["hardsigmoid", "hardswish-clip", "hardswish-two-step", "hardswish-hs", "mish", "silu"]
DEFECTS = {
    "clip-lo": "are not [0, finite positive]",
    "scale-off": "is not 1",
    "no-add": "not x + constant",
    "hs-alpha": "is not HardSwish",
    "other-x": "not scaled by 1/6",
    "intermediate-read": "is also read by Relu",
    "mish-other": "not part of x * tanh(softplus(x))",
}


@st.composite
def activations(draw, form: str | None = None, defect: str | None = None):
    """(model, dtype, opset, form, whether x is scaled by 4 in front of the pattern)."""
    form = form or {"hs-alpha": "hardswish-hs", "mish-other": "mish"}.get(defect, "hardswish-clip")
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float16])))
    clip_forms = form in ("hardsigmoid", "hardswish-clip", "hardswish-two-step")
    opset = draw(st.sampled_from([10, 13, 14, 18] if clip_forms else [13, 14, 17, 18]))
    dims = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    seed = draw(st.integers(0, 2**16 - 1))
    b = Builder(dtype, dims, opset, as_node=lambda i: bool((seed >> (i % 16)) & 1))
    order = lambda a, c: (a, c) if draw(st.booleans()) else (c, a)  # noqa: E731
    prefixed = draw(st.booleans())
    x = b.op("Mul", "x", b.const(4.0)) if prefixed else "x"  # reach both saturations
    other = b.input(["N", *dims], "y") if defect in ("other-x", "mish-other") else x

    def clip(t: str, lo: float, hi: float) -> str:
        if opset < 11:
            return b.op("Clip", t, min=lo, max=hi, name="root")
        return b.op("Clip", t, b.const(lo), b.const(hi), name="root")

    def scale(t: str, by: float) -> str:
        return b.op("Mul", *order(t, b.const(1 / by))) if draw(st.booleans()) else b.op("Div", t, b.const(by))

    if form == "hardsigmoid":
        hi = draw(st.sampled_from([1.0, 2.0, 6.0]))
        pre = draw(st.sampled_from(["none", "mul", "div"]))
        t = {"none": lambda: x, "mul": lambda: b.op("Mul", *order(x, b.const(0.25))),
             "div": lambda: b.op("Div", x, b.const(3.0))}[pre]()
        c = clip(b.op("Add", *order(t, b.const(draw(st.sampled_from([0.5, 1.5, 3.0]))))), 0.0, hi)
        y = c if hi == 1.0 else scale(c, hi)
    elif form in ("hardswish-clip", "hardswish-two-step"):
        lo = -1.0 if defect == "clip-lo" else 0.0
        added = x if defect == "no-add" else b.op("Add", *order(x, b.const(3.0)))
        c = clip(added, lo, 6.0)
        if defect == "intermediate-read":
            b.output(b.op("Relu", c))
        divisor = 5.0 if defect == "scale-off" else 6.0
        if form == "hardswish-two-step":
            y = b.op("Mul", *order(other, scale(c, divisor)))
        else:
            y = scale(b.op("Mul", *order(other, c)), divisor)
    elif form == "hardswish-hs":
        alpha = 0.2 if defect == "hs-alpha" else 1 / 6
        y = b.op("Mul", *order(other, b.op("HardSigmoid", x, alpha=alpha, beta=0.5, name="root")))
    elif form == "mish":
        y = b.op("Mul", *order(other, b.op("Tanh", b.op("Softplus", x, name="root"))))
    else:
        y = b.op("Mul", *order(other, b.op("Sigmoid", x, name="root")))
    b.output(y)
    return b.model(), dtype, opset, form, prefixed


EXPECTED = {  # form -> (op counts after, below the target's opset; at or above it; target opset)
    "hardsigmoid": ({"HardSigmoid": 1}, {"HardSigmoid": 1}, 6),
    "hardswish-clip": ({"HardSigmoid": 1, "Mul": 1}, {"HardSwish": 1}, 14),
    "hardswish-two-step": ({"HardSigmoid": 1, "Mul": 1}, {"HardSwish": 1}, 14),
    "hardswish-hs": (None, {"HardSwish": 1}, 14),
    "mish": (None, {"Mish": 1}, 18),
    "silu": (None, None, 99),
}


@pytest.mark.parametrize("form", FORMS)
@given(data=st.data())
def test_activation_is_fused(form, data):
    model, dtype, opset, form, prefixed = data.draw(activations(form))
    note(onnx.printer.to_text(model.graph))
    optimized, report = check_fused(model, PASSES, dtype, f"{form}")
    note(onnx.printer.to_text(optimized.graph))
    below, above, target = EXPECTED[form]
    expected = above if opset >= target else below
    after = op_counts(optimized)
    if expected is None:
        assert after == op_counts(model)
        assert rewrites(report, "fuse-activations") == 0
    else:
        after["Mul"] -= prefixed  # x * 4 in front of the pattern
        del after["Constant"]
        assert +after == expected, after
    assert len(optimized.graph.node) <= len(model.graph.node)
    findings = inspect_pass(optimized, "fuse-activations")
    if form == "silu":
        (finding,) = findings[[n.name for n in optimized.graph.node if n.op_type == "Sigmoid"][0]]
        assert not finding.applies and finding.message.startswith("SiLU x * Sigmoid(x) recognised")
    if form == "mish" and opset < 18:
        (finding,) = findings["root"]
        assert not finding.applies and "Mish needs opset 18, the model has" in finding.message
    # A fixed point: nothing left that the pass would rewrite.
    assert not any(f.applies for fs in findings.values() for f in fs)


@given(st.sampled_from(sorted(DEFECTS)).flatmap(lambda d: st.tuples(st.just(d), activations(defect=d))))
def test_near_miss_is_kept_with_its_reason(case):
    defect, (model, dtype, opset, form, _) = case
    note(onnx.printer.to_text(model.graph))
    optimized, report = check_fused(model, PASSES, dtype, "activation near miss")
    assert op_counts(optimized) == op_counts(model)
    (finding,) = inspect_pass(model, "fuse-activations")["root"]
    assert not finding.applies and DEFECTS[defect] in finding.message, finding.message


POOLED_FORMS = ["hardswish-op", "hardswish-hs", "hardswish-clip", "hardswish-clip-mul", "hardswish-two-step"]
REDUCTIONS = ["ReduceMean", "ReduceSum", "ReduceMax", "GlobalAveragePool"]


@st.composite
def pooled_hardswish(draw, form: str):
    """(model, dtype, form, reduction, whether x is scaled by 4 in front): a HardSwish form
    read only by a reduction over some of x's axes (keepdims, so the output keeps x's rank)."""
    reduction = draw(st.sampled_from(REDUCTIONS))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float16])))
    opset = draw(st.sampled_from([14, 17, 18] if form == "hardswish-op" else [10, 13, 14, 18]))
    dims = draw(st.lists(st.integers(1, 5), min_size=2, max_size=3))
    seed = draw(st.integers(0, 2**16 - 1))
    b = Builder(dtype, dims, opset, as_node=lambda i: bool((seed >> (i % 16)) & 1))
    order = lambda a, c: (a, c) if draw(st.booleans()) else (c, a)  # noqa: E731
    prefixed = draw(st.booleans())
    x = b.op("Mul", "x", b.const(4.0)) if prefixed else "x"

    def clip(t: str) -> str:
        if opset < 11:
            return b.op("Clip", t, min=0.0, max=6.0)
        return b.op("Clip", t, b.const(0.0), b.const(6.0))

    if form == "hardswish-op":
        y = b.op("HardSwish", x)
    elif form == "hardswish-hs":
        y = b.op("Mul", *order(x, b.op("HardSigmoid", x, alpha=1 / 6, beta=0.5)))
    else:
        c = clip(b.op("Add", *order(x, b.const(3.0))))
        if form == "hardswish-two-step":
            y = b.op("Mul", *order(x, b.op("Div", c, b.const(6.0))))
        elif form == "hardswish-clip-mul":
            y = b.op("Mul", *order(b.op("Mul", *order(x, c)), b.const(1 / 6)))
        else:
            y = b.op("Div", b.op("Mul", *order(x, c)), b.const(6.0))
    if reduction == "GlobalAveragePool":
        pooled = b.op(reduction, y, name="pool")
    else:
        axes = sorted(draw(st.sets(st.integers(1, len(dims)), min_size=1)))
        if opset >= (13 if reduction == "ReduceSum" else 18):
            pooled = b.op(reduction, y, b.const(axes, np.int64), keepdims=1, name="pool")
        else:
            pooled = b.op(reduction, y, axes=axes, keepdims=1, name="pool")
    b.output(pooled)
    return b.model(), dtype, form, reduction, prefixed


@pytest.mark.parametrize("form", POOLED_FORMS)
@given(data=st.data())
def test_hardswish_read_by_a_reduction_becomes_the_clip_form(form, data):
    model, dtype, form, reduction, prefixed = data.draw(pooled_hardswish(form))
    note(onnx.printer.to_text(model.graph))
    optimized, report = check_fused(model, PASSES, dtype, f"{form} pooled")
    note(onnx.printer.to_text(optimized.graph))
    after = op_counts(optimized)
    after["Mul"] -= prefixed
    del after["Constant"]
    assert +after == {"Add": 1, "Clip": 1, "Mul": 1, "Div": 1, reduction: 1}, after
    producer = {o: n for n in optimized.graph.node for o in n.output}
    (pool,) = [n for n in optimized.graph.node if n.op_type == reduction]
    div = producer[pool.input[0]]
    mul = producer[div.input[0]]
    (clip,) = [producer[t] for t in mul.input if t in producer and producer[t].op_type == "Clip"]
    (x,) = set(mul.input) - {clip.output[0]}
    add = producer[clip.input[0]]
    assert (add.op_type, mul.op_type, div.op_type) == ("Add", "Mul", "Div") and x in add.input
    findings = inspect_pass(optimized, "fuse-activations")
    (kept,) = findings[clip.name]
    assert not kept.applies and kept.message == (f"HardSwish as x * Clip(x + 3, 0, 6) / 6 read by {reduction} is "
                                                  "kept: TensorRT fuses it into the reduction")
    assert not any(f.applies for fs in findings.values() for f in fs)


def test_hardswish_read_by_anything_else_stays_the_op():
    model = parse('<ir_version: 8, opset_import: ["" : 14]>\n'
                  "g (float[N,4,3,3] x) => (float[N,4,1,1] y, float[N,4,3,3] z, float[N,4,1,1] w, float[N,4,3,3] v) {\n"
                  " [both] h = HardSwish(x)\n y = ReduceMean<axes = [2, 3]>(h)\n z = Relu(h)\n"
                  " [relu] g = HardSwish(x)\n w = GlobalMaxPool(g)\n [out] v = HardSwish(x)\n}")
    findings = {n: [(f.applies, f.message) for f in fs] for n, fs in inspect_pass(model, "fuse-activations").items()}
    kept = [(False, "HardSwish is kept: it is not read by a reduction only")]
    assert findings == {"both": kept, "relu": kept, "out": kept}
    optimized, report = check_fused(model, PASSES, np.float32, "hardswish kept")
    assert op_counts(optimized) == op_counts(model) and rewrites(report, "fuse-activations") == 0


def test_hardswish_pooled_through_a_transpose_stays_the_op():
    """channels-last-mean writes a pool as Transpose then ReduceMean: there the op fuses as
    well as the Clip form (tensorrt_rtx 1.7.1, 18 sizes and profiles), so a Clip form
    written for a direct reduction goes back to the op."""
    model = parse('<ir_version: 8, opset_import: ["" : 17]>\n'
                  "g (float[N,4,3,3] x) => (float[N,4] y) <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {\n"
                  " a = Add(x, three)\n c = Clip(a, zero, six)\n m = Mul(x, c)\n h = Div(m, six)\n"
                  " n = Transpose<perm = [0, 2, 3, 1]>(h)\n"
                  " y = ReduceMean<axes = [1, 2], keepdims = 0>(n)\n}")
    optimized, report = check_fused(model, PASSES, np.float32, "hardswish through transpose")
    assert op_counts(optimized) == {"HardSwish": 1, "Transpose": 1, "ReduceMean": 1}
    assert rewrites(report, "fuse-activations") == 1


# ---------------------------------------------------------------- fixed cases

def test_messages_say_what_happens():
    model = parse('<ir_version: 8, opset_import: ["" : 14]>\n'
                  "g (float[N,4] x) => (float[N,4] y, float[N,4] z, float[N,4] w, float[N,1] q, float s) "
                  "<float three = {3.0}, float zero = {0.0}, float six = {6.0}> {\n"
                  " a = Add(x, three)\n [clip] c = Clip(a, zero, six)\n m = Mul(x, c)\n y = Div(m, six)\n"
                  " [hs] h = HardSigmoid<alpha = 0.2>(x)\n z = Mul(h, x)\n"
                  " [relu6] r = Clip(x, zero, six)\n w = Div(r, six)\n"
                  " [head] p = HardSwish(x)\n q = ReduceMean<axes = [1]>(p)\n"
                  " a2 = Add(x, three)\n [pooled] c2 = Clip(a2, zero, six)\n m2 = Mul(x, c2)\n d2 = Div(m2, six)\n"
                  " s = ReduceSum<keepdims = 0>(d2)\n}")
    findings = {n: [(f.applies, f.message) for f in fs] for n, fs in inspect_pass(model, "fuse-activations").items()}
    assert findings == {
        "clip": [(True, "HardSwish replaces 4 nodes")],
        "hs": [(False, "x * HardSigmoid(alpha 0.2, beta 0.5) is not HardSwish (alpha 1/6, beta 1/2)")],
        "relu6": [(False, "Clip input is not x + constant (a ReLU6-like clip, not a hard sigmoid)")],
        "head": [(True, "HardSwish read by ReduceMean becomes x * Clip(x + 3, 0, 6) / 6, which TensorRT fuses "
                        "into the reduction")],
        "pooled": [(False, "HardSwish as x * Clip(x + 3, 0, 6) / 6 read by ReduceSum is kept: TensorRT fuses it "
                           "into the reduction")],
    }


def test_hardswish_below_opset_14_becomes_x_times_hardsigmoid():
    model = parse('<ir_version: 7, opset_import: ["" : 13]>\n'
                  "g (float[N,4] x) => (float[N,4] y) <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {\n"
                  " a = Add(three, x)\n [clip] c = Clip(a, zero, six)\n m = Mul(c, x)\n y = Div(m, six)\n}")
    optimized, _ = check_fused(model, PASSES, np.float32, "hardswish-clip")
    (hs,) = [n for n in optimized.graph.node if n.op_type == "HardSigmoid"]
    attrs = {a.name: a.f for a in hs.attribute}
    assert attrs == {"alpha": pytest.approx(1 / 6), "beta": pytest.approx(0.5)}
    assert op_counts(optimized) == {"HardSigmoid": 1, "Mul": 1}


def test_pre_scaled_input_multiplied_whole_is_hardswish_of_it():
    """v = 2x; v * Clip(v + 3, 0, 6) / 6 is HardSwish(v), not x * HardSigmoid(x)."""
    model = parse('<ir_version: 8, opset_import: ["" : 14]>\n'
                  "g (float[N,4] x) => (float[N,4] y) "
                  "<float two = {2.0}, float three = {3.0}, float zero = {0.0}, float six = {6.0}> {\n"
                  " v = Mul(x, two)\n a = Add(v, three)\n c = Clip(a, zero, six)\n m = Mul(v, c)\n y = Div(m, six)\n}")
    optimized, _ = check_fused(model, PASSES, np.float32, "hardswish-clip")
    assert op_counts(optimized) == {"Mul": 1, "HardSwish": 1}


# ---------------------------------------------------------------- real model

def test_mobilenet_keeps_its_hardswish_and_relu6():
    """torch exports nn.Hardswish as HardSwish at opset 14 already; ReLU6 is Clip(x, 0, 6)
    with nothing added, which must stay a Clip. The head's HardSwish is read by the pool
    through channels-last-mean's Transpose: it stays the op (test_builder: the head builds
    to one engine layer, as the raw export's)."""
    original, optimized, report, worst = zoo_run("mobilenet")
    before, after = op_counts(original), op_counts(optimized)
    assert before["HardSwish"] == after["HardSwish"] == 7
    assert before["Clip"] == after["Clip"] == 5
    (pool,) = [n for n in optimized.graph.node if n.op_type == "ReduceMean"]
    producer = {o: n for n in optimized.graph.node for o in n.output}
    transpose = producer[pool.input[0]]  # channels-last-mean's form of the pool
    assert transpose.op_type == "Transpose" and producer[transpose.input[0]].op_type == "HardSwish"
    findings = inspect_pass(optimized, "fuse-activations")
    clips = [n.name for n in optimized.graph.node if n.op_type == "Clip"]
    assert [findings[c][0].message.split(":")[0] for c in clips] == [
        "Clip input is not x + constant (a ReLU6-like clip, not a hard sigmoid)"] * 5
    MAX_DIFF["mobilenet (default pipeline)"] = worst
