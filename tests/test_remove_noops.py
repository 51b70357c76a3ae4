"""remove-noops: every rule removes exactly the no-ops, and nothing that computes.

Each positive graph puts the no-op between two real ops, with a dynamic batch dim N, and
is compared under onnxruntime at N = 1 and N = 3. Each near miss must keep its node and
say why through ``inspect``. infer-shapes runs alongside: the rules need shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import (assert_same_outputs, check_exact, check_unchanged, inspect_pass, op_counts,
                           optimize_with, parse, removed_by)

PASSES = ["remove-noops", "infer-shapes"]


def graph(body: str, inputs: str = "float[N,4,5] x", outputs: str = "float[N,4,5] y",
          inits: str = "") -> onnx.ModelProto:
    """``x -> Relu -> a -> <body: a -> b> -> Sigmoid -> y``."""
    init = f" <{inits}>" if inits else ""
    return parse(f"g ({inputs}) => ({outputs}){init} {{\n  a = Relu(x)\n{body}\n  y = Sigmoid(b)\n}}")


POSITIVE = {
    "identity": ("b = Identity(a)", "Identity", ""),
    "dropout": ("b = Dropout(a)", "Dropout", ""),
    "dropout-ratio": ("r = Constant<value = float {0.3}>()\n b = Dropout(a, r)", "Dropout", ""),
    "dropout-training-false": ("r = Constant<value = float {0.3}>()\n t = Constant<value = bool {0}>()\n"
                               " b = Dropout(a, r, t)", "Dropout", ""),
    "dropout-unused-mask": ("b, mask = Dropout(a)", "Dropout", ""),
    "reshape-same": ("b = Reshape(a, s)", "Reshape", "int64[3] s = {0, 4, 5}"),
    "reshape-minus-one-batch": ("b = Reshape(a, s)", "Reshape", "int64[3] s = {-1, 4, 5}"),
    "reshape-minus-one-last": ("b = Reshape(a, s)", "Reshape", "int64[3] s = {0, 0, -1}"),
    "expand-ones": ("b = Expand(a, s)", "Expand", "int64[2] s = {1, 5}"),
    "expand-same": ("b = Expand(a, s)", "Expand", "int64[3] s = {1, 4, 5}"),
    "expand-scalar-shape": ("b = Expand(a, s)", "Expand", "int64[0] s = {}"),
    "cast-same": ("b = Cast<to = 1>(a)", "Cast", ""),
    "castlike-same": ("b = CastLike(a, a)", "CastLike", ""),
    "transpose-identity": ("b = Transpose<perm = [0, 1, 2]>(a)", "Transpose", ""),
    "pad-zero": ("b = Pad(a, p)", "Pad", "int64[6] p = {0, 0, 0, 0, 0, 0}"),
    "pad-zero-reflect": ("b = Pad<mode = \"reflect\">(a, p)", "Pad", "int64[6] p = {0, 0, 0, 0, 0, 0}"),
    "concat-one": ("b = Concat<axis = 1>(a)", "Concat", ""),
    "mul-one": ("b = Mul(a, one)", "Mul", "float one = {1.0}"),
    "mul-one-first": ("b = Mul(one, a)", "Mul", "float one = {1.0}"),
    "mul-ones-row": ("b = Mul(a, one)", "Mul", "float[5] one = {1, 1, 1, 1, 1}"),
    "mul-ones-column": ("b = Mul(a, one)", "Mul", "float[4,1] one = {1, 1, 1, 1}"),
    "div-one": ("b = Div(a, one)", "Div", "float[1] one = {1.0}"),
    "add-zero": ("b = Add(a, zero)", "Add", "float zero = {0.0}"),
    "add-zero-first": ("b = Add(zero, a)", "Add", "float[1,1,1] zero = {0.0}"),
    "add-negative-zero": ("b = Add(a, zero)", "Add", "float zero = {-0.0}"),
    "sub-zero": ("b = Sub(a, zero)", "Sub", "float zero = {0.0}"),
    "mul-one-constant-node": ("one = Constant<value = float {1.0}>()\n b = Mul(a, one)", "Mul", ""),
    "slice-to-the-end-of-the-batch": ("b = Slice(a, st, en, ax)", "Slice",
                                      "int64[1] st = {0}, int64[1] en = {9223372036854775807}, int64[1] ax = {0}"),
    "slice-whole-static": ("b = Slice(a, st, en, ax)", "Slice",
                           "int64[2] st = {0, -5}, int64[2] en = {4, 5}, int64[2] ax = {1, -1}"),
    "slice-past-the-end": ("b = Slice(a, st, en, ax, sp)", "Slice",
                           "int32[1] st = {-10}, int32[1] en = {100}, int32[1] ax = {2}, int32[1] sp = {1}"),
    "slice-without-axes": ("b = Slice(a, st, en)", "Slice",
                           "int64[3] st = {0, 0, 0}, int64[3] en = {9223372036854775807, 4, 5}"),
    "split-one": ("b = Split<axis = 1>(a)", "Split", ""),
}


@pytest.mark.parametrize("case", POSITIVE)
def test_noop_is_removed_and_outputs_unchanged(case):
    body, op, inits = POSITIVE[case]
    body = body.replace("b = ", "[target] b = ").replace("b, mask = ", "[target] b, mask = ")
    model = graph(body, inits=inits)
    optimized, report = check_exact(model, PASSES, removed=[op])
    assert op_counts(optimized) == {"Relu": 1, "Sigmoid": 1}
    assert removed_by(report, "target") == ["remove-noops"]
    assert [f.applies for f in inspect_pass(model, "remove-noops")["target"]] == [True]


# (case, body: [target] reads a, the body ends in c of a's shape, op, initializers, reason)
SLICE_4 = "int64[1] st = {0}, int64[1] en = {4}, int64[1] ax1 = {1}"
NEAR_MISSES = [
    ("reshape-swaps-dims", "[target] b = Reshape(a, s)\n c = Transpose<perm = [0, 2, 1]>(b)", "Reshape",
     "int64[3] s = {0, 5, 4}", "may differ"),
    ("reshape-flattens", "[target] b = Reshape(a, s)\n c = Reshape(b, back)", "Reshape",
     "int64[2] s = {0, 20}, int64[3] back = {0, 4, 5}", "changes the rank"),
    ("expand-broadcasts", "r = ReduceMax<axes = [2], keepdims = 1>(a)\n [target] c = Expand(r, s)", "Expand",
     "int64[3] s = {1, 4, 5}", "may broadcast"),
    ("expand-adds-dims", "[target] b = Expand(a, s)\n c = ReduceSum<keepdims = 0>(b, ax0)", "Expand",
     "int64[4] s = {2, 1, 4, 5}, int64[1] ax0 = {0}", "adds dimensions"),
    ("cast-to-half", "[target] b = Cast<to = 10>(a)\n c = Cast<to = 1>(b)", "Cast", "",
     "casts float32 to float16"),
    ("castlike-to-double", "[target] b = CastLike(a, d)\n c = Cast<to = 1>(b)", "CastLike",
     "double d = {1.0}", "casts float32 to float64"),
    ("transpose-swaps", "[target] b = Transpose<perm = [0, 2, 1]>(a)\n c = Transpose<perm = [0, 2, 1]>(b)",
     "Transpose", "", "perm [0, 2, 1] is not the identity"),
    ("pad-nonzero", "[target] b = Pad(a, p)\n c = Slice(b, st, en, ax1)", "Pad",
     "int64[6] p = {0, 0, 0, 0, 1, 0}, " + SLICE_4, "not all zero"),
    ("concat-two", "[target] b = Concat<axis = 1>(a, a)\n c = Slice(b, st, en, ax1)", "Concat", SLICE_4,
     "several inputs"),
    ("mul-two", "[target] c = Mul(a, two)", "Mul", "float two = {2.0}", "not all 1"),
    ("mul-one-broadcasts-column", "r = ReduceMax<axes = [2], keepdims = 1>(a)\n [target] c = Mul(r, one)", "Mul",
     "float[5] one = {1, 1, 1, 1, 1}", "larger shape"),
    ("mul-one-broadcasts-rank", "[target] b = Mul(a, one)\n c = ReduceMax<axes = [0], keepdims = 0>(b)", "Mul",
     "float[2,1,1,1] one = {1, 1}", "larger shape"),
    ("add-zero-broadcasts", "r = ReduceMax<axes = [2], keepdims = 1>(a)\n [target] c = Add(zero, r)", "Add",
     "float[1,1,5] zero = {0, 0, 0, 0, 0}", "larger shape"),
    ("sub-zero-first", "[target] c = Sub(zero, a)", "Sub", "float zero = {0.0}", "no constant operand"),
    ("div-one-first", "[target] c = Div(one, a)", "Div", "float one = {1.0}", "no constant operand"),
    ("add-not-zero", "[target] c = Add(a, k)", "Add", "float[5] k = {0, 0, 0, 0, 1e-3}", "not all 0"),
    ("dropout-mask-used", "[target] b, mask = Dropout(a)\n m = Cast<to = 1>(mask)\n c = Add(b, m)", "Dropout",
     "", "mask output is used"),
    ("dropout-training", "r = Constant<value = float {0.0}>()\n t = Constant<value = bool {1}>()\n"
     " [target] c = Dropout(a, r, t)", "Dropout", "", "training_mode"),
    ("slice-part", "[target] b = Slice(a, st, en, ax1)\n c = Pad(b, p)", "Slice",
     "int64[1] st = {0}, int64[1] en = {3}, int64[1] ax1 = {1}, int64[6] p = {0, 0, 0, 0, 1, 0}",
     "ends at 3 on axis 1 of size 4"),
    ("slice-reversed", "[target] c = Slice(a, st, en, ax1, sp)", "Slice",
     "int64[1] st = {-1}, int64[1] en = {-9223372036854775807}, int64[1] ax1 = {1}, int64[1] sp = {-1}",
     "step -1 on axis 1"),
    ("slice-batch-to-a-number", "[target] c = Slice(a, st, en, ax0)", "Slice",
     "int64[1] st = {0}, int64[1] en = {100}, int64[1] ax0 = {0}", "ends at 100 on axis 0 of size N"),
    ("slice-start", "[target] b = Slice(a, st, en, ax1)\n c = Pad(b, p)", "Slice",
     "int64[1] st = {1}, int64[1] en = {4}, int64[1] ax1 = {1}, int64[6] p = {0, 1, 0, 0, 0, 0}",
     "starts at 1 on axis 1"),
    ("split-two", "[target] b, d = Split<axis = 1>(a, sp)\n c = Concat<axis = 1>(d, b)", "Split",
     "int64[2] sp = {2, 2}", "splits into 2 outputs"),
]


@pytest.mark.parametrize("case,body,op,inits,reason", NEAR_MISSES, ids=[c[0] for c in NEAR_MISSES])
def test_near_miss_is_kept_with_its_reason(case, body, op, inits, reason):
    init = f" <{inits}>" if inits else ""
    model = parse(f"g (float[N,4,5] x) => (float[N,4,5] y){init} {{\n a = Relu(x)\n {body}\n y = Sigmoid(c)\n}}")
    optimized, report = check_unchanged(model, PASSES, kept=[op])
    assert "target" not in {e.node for e in report.events}
    findings = inspect_pass(model, "remove-noops")["target"]
    assert [f.applies for f in findings] == [False]
    assert reason in findings[0].message, findings[0].message


def test_reshape_with_two_unknown_dims_is_kept():
    """[N, M, 5] -> [-1, 4, 5]: right only if M = 4, which is not known."""
    model = parse("g (float[N,M,5] x) => (float[N,4,5] y) <int64[3] s = {-1, 4, 5}> {\n"
                  " a = Relu(x)\n [target] b = Reshape(a, s)\n y = Sigmoid(b)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Reshape"] == 1
    x = np.random.default_rng(0).standard_normal((2, 8, 5)).astype(np.float32)  # N=2, M=8 -> [4, 4, 5]
    assert_same_outputs(model, optimized, [{"x": x}])
    assert not inspect_pass(model, "remove-noops")["target"][0].applies


def test_reshape_with_allowzero_zero_target_is_kept():
    model = parse("g (float[N,4,5] x) => (float[N,4,5] y) <int64[3] s = {0, 4, 5}> {\n"
                  " a = Relu(x)\n [target] b = Reshape<allowzero = 1>(a, s)\n y = Sigmoid(b)\n}")
    finding = inspect_pass(model, "remove-noops")["target"]
    assert not finding[0].applies and "may differ" in finding[0].message
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Reshape"] == 1


def test_unknown_shapes_decline():
    """Without shape facts, shape-dependent rules decline instead of guessing."""
    model = parse("g (float[N,4,5] x) => (float[N,4,5] y) <int64[3] s = {0, 4, 5}, float one = {1.0}> {\n"
                  " a = Relu(x)\n [r] b = Reshape(a, s)\n [m] c = Mul(b, one)\n [c] d = Cast<to = 1>(c)\n"
                  " y = Sigmoid(d)\n}")
    findings = inspect_pass(model, "remove-noops", infer_shapes=False)
    assert findings["r"][0].message == "input shape is unknown"
    assert findings["m"][0].message == "input shape is unknown"
    assert findings["c"][0].message == "input type is unknown"
    assert not any(f.applies for fs in findings.values() for f in fs)
    findings = inspect_pass(model, "remove-noops")
    assert [findings[n][0].message for n in ("r", "m", "c")] == \
        ["Reshape to the same shape removed", "Mul by 1 removed", "Cast to the same type removed"]


def test_dropout_training_mode_from_input_is_kept():
    model = parse("g (float[N,4] x, bool t) => (float[N,4] y) {\n a = Relu(x)\n"
                  " r = Constant<value = float {0.0}>()\n [d] b = Dropout(a, r, t)\n y = Sigmoid(b)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Dropout"] == 1
    assert inspect_pass(model, "remove-noops")["d"][0].message == "training_mode is not a constant false"


def test_dropout_whose_mask_is_a_graph_output_is_kept():
    """Removing it would leave the graph output ``mask`` with no producer."""
    model = parse("g (float[N,4] x) => (float[N,4] y, bool[N,4] mask) {\n a = Relu(x)\n"
                  " [d] b, mask = Dropout(a)\n y = Sigmoid(b)\n}")
    optimized, _ = check_unchanged(model, PASSES, kept=["Dropout"])
    finding = inspect_pass(model, "remove-noops")["d"][0]
    assert not finding.applies and "mask" in finding.message


# ---------------------------------------------------------------- graph outputs

def test_identity_from_graph_input_to_graph_output_stays():
    model = parse("g (float[N,4] x) => (float[N,4] y, float[N,4] z) {\n [id] y = Identity(x)\n z = Relu(x)\n}")
    optimized, report = check_unchanged(model, PASSES, kept=["Identity"])
    assert [o.name for o in optimized.graph.output] == ["y", "z"]
    finding = inspect_pass(model, "remove-noops")["id"][0]
    assert not finding.applies and "graph input or constant straight to a graph output" in finding.message


def test_noop_from_initializer_to_graph_output_stays():
    model = parse("g (float[N,4] x) => (float[N,4] y, float[2] z) <float[2] w = {1, 2}> {\n"
                  " y = Relu(x)\n [id] z = Identity(w)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized)["Identity"] == 1
    assert inspect_pass(model, "remove-noops")["id"][0].applies is False


def test_mul_by_one_from_graph_input_to_graph_output_stays():
    model = parse("g (float[N,4] x) => (float[N,4] y) <float one = {1.0}> {\n [m] y = Mul(x, one)\n}")
    check_unchanged(model, PASSES, kept=["Mul"])
    assert inspect_pass(model, "remove-noops")["m"][0].applies is False


def test_identity_to_graph_output_from_node_is_removed_keeping_the_name():
    model = parse("g (float[N,4] x) => (float[N,4] y) {\n [r] a = Relu(x)\n [id] y = Identity(a)\n}")
    optimized, report = check_exact(model, PASSES, removed=["Identity"])
    (relu,) = optimized.graph.node
    assert relu.op_type == "Relu" and list(relu.output) == ["y"]
    assert removed_by(report, "id") == ["remove-noops"]


def test_identity_chain_to_graph_output_collapses():
    model = parse("g (float[N,4] x) => (float[N,4] y) {\n a = Relu(x)\n b = Identity(a)\n"
                  " c = Identity(b)\n y = Identity(c)\n}")
    optimized, _ = check_exact(model, PASSES, removed=["Identity"])
    assert [(n.op_type, list(n.output)) for n in optimized.graph.node] == [("Relu", ["y"])]


def test_identity_to_graph_output_whose_input_has_other_consumers():
    model = parse("g (float[N,4] x) => (float[N,4] y, float[N,4] z) {\n a = Relu(x)\n"
                  " y = Identity(a)\n z = Sigmoid(a)\n}")
    optimized, _ = check_exact(model, PASSES, removed=["Identity"])
    assert [list(n.output) for n in optimized.graph.node] == [["y"], ["z"]]


def test_two_identities_of_one_tensor_to_two_graph_outputs_keep_both_names():
    model = parse("g (float[N,4] x) => (float[N,4] y, float[N,4] z) {\n a = Relu(x)\n"
                  " y = Identity(a)\n z = Identity(a)\n}")
    optimized, _ = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Relu": 1, "Identity": 1}
    assert_same_outputs(model, optimized)


def test_identity_of_one_graph_output_to_another_stays():
    model = parse("g (float[N,4] x) => (float[N,4] y, float[N,4] z) {\n y = Relu(x)\n [id] z = Identity(y)\n}")
    check_unchanged(model, PASSES, kept=["Identity"])


# ---------------------------------------------------------------- inspect and trace

def test_inspect_reports_matches_and_declines_without_rewriting():
    model = parse("g (float[N,4,5] x) => (float[N,4,5] y) <float one = {1.0}, float[1,4,5] big = {"
                  + ", ".join(["1"] * 20) + "}> {\n a = Relu(x)\n [keep_id] b = Identity(a)\n"
                  " [mul_one] c = Mul(b, one)\n [perm] d = Transpose<perm = [0, 2, 1]>(c)\n"
                  " [perm_back] e = Transpose<perm = [0, 2, 1]>(d)\n [mul_big] f = Mul(e, big)\n y = Sigmoid(f)\n}")
    findings = inspect_pass(model, "remove-noops")
    assert {n: [(f.applies, f.message) for f in fs] for n, fs in findings.items()} == {
        "keep_id": [(True, "Identity removed")],
        "mul_one": [(True, "Mul by 1 removed")],
        "perm": [(False, "perm [0, 2, 1] is not the identity")],
        "perm_back": [(False, "perm [0, 2, 1] is not the identity")],
        "mul_big": [(True, "Mul by 1 removed")],
    }
    optimized, report = check_exact(model, PASSES, removed=["Identity"])
    assert op_counts(optimized) == {"Relu": 1, "Transpose": 2, "Sigmoid": 1}
    assert removed_by(report, "keep_id") == ["remove-noops"]
    assert removed_by(report, "mul_one") == ["remove-noops"]
    assert removed_by(report, "perm") == []


def test_trace_names_the_pass_and_the_rule():
    from fusekit.api import run

    model = parse("g (float[N,4] x) => (float[N,4] y) <float zero = {0.0}> {\n a = Relu(x)\n"
                  " [z] b = Add(a, zero)\n y = Sigmoid(b)\n}")
    result = run(model, passes=PASSES, trace="z")
    trace = result.report.trace("z")
    assert [(e["pass_name"], e["action"]) for e in trace["events"]] == [("remove-noops", "Add by 0 removed")]
    # round 1 runs before the shapes are inferred: the verdict is the one given at that moment
    assert [(s["round"], s["pass_name"], s["verdict"], s["message"]) for s in trace["steps"]] == [
        (1, "remove-noops", "declined", "input shape is unknown"), (2, "remove-noops", "rewrote", "Add by 0 removed")]
    assert trace["fate"] == "gone from the optimized model: remove-noops, round 2: Add by 0 removed"


def test_casts_of_types_numpy_lacks():
    """bfloat16/float8 dtypes are ONNX enums in onnx-graphsurgeon: compared, not crashed on."""
    model = parse('<ir_version: 9, opset_import: ["" : 19]>\n'
                  "g (float[N,4,5] x) => (float[N,4,5] y) {\n a = Relu(x)\n [to_bf16] b = Cast<to = 16>(a)\n"
                  " [same] c = Cast<to = 16>(b)\n [like] d = CastLike(c, b)\n [to_f8] e = Cast<to = 17>(d)\n"
                  " [back] f = Cast<to = 1>(e)\n y = Sigmoid(f)\n}")
    findings = inspect_pass(model, "remove-noops")
    assert [(n, findings[n][0].applies, findings[n][0].message) for n in ("to_bf16", "same", "like", "to_f8")] == [
        ("to_bf16", False, "casts float32 to bfloat16"),
        ("same", True, "Cast to the same type removed"),
        ("like", True, "CastLike to the same type removed"),
        ("to_f8", False, "casts bfloat16 to float8_e4m3fn"),
    ]
    optimized, report = optimize_with(model, PASSES)
    assert op_counts(optimized) == {"Relu": 1, "Cast": 3, "Sigmoid": 1}
    assert removed_by(report, "same") == ["remove-noops"] and removed_by(report, "like") == ["remove-noops"]
    assert_same_outputs(model, optimized)


def test_slice_with_attributes_before_opset_10():
    model = parse('<ir_version: 4, opset_import: ["" : 9]>\n'
                  "g (float[N,4,5] x) => (float[N,4,5] y) {\n a = Relu(x)\n"
                  " [target] b = Slice<starts = [0, -9], ends = [4, 100], axes = [1, 2]>(a)\n y = Sigmoid(b)\n}")
    optimized, report = check_exact(model, PASSES, removed=["Slice"])
    assert removed_by(report, "target") == ["remove-noops"]
