"""linear-to-pointwise-conv: channels-last Linear chains closed by a Transpose to NCHW become 1x1 Convs.

Property: x is [B, C, H, W] (B dynamic or static), viewed channels-last by
Transpose(0, 2, 3, 1) (optionally followed by a Softmax over the channels, a layout-dependent
op); then 1 to 3 Linears (weight a [K, N] constant or a Transpose of an [N, K] one; bias [N],
[1, N], [1, 1, 1, N], [], [1] or none, on either side of the Add; float32), with pointwise regions
between them and optionally after the last (none, Relu, the decomposed erf GELU whose input
is read twice, scalar Mul and Add, Clip, a Mul by a per-channel [C] or [1, 1, C] constant such
as ConvNeXt's layer scale); then Transpose(0, 3, 1, 2). After the pass every Linear is a Conv,
no MatMul is left, the closing Transpose became the one before the first Conv, channel
constants are [1, C, 1, 1], and outputs match at B = 1 and B = 3. Near misses: another
closing perm, a bias varying along H, a Linear or MatMul result read elsewhere, a weight
that is an input, an integer or float64 Linear, a constant varying along H after the last
Linear; between two Linears, such a constant or a region value read elsewhere stops the
chain there. Zoo: the ConvNeXt's 12 Linears become Convs in the default pipeline; the
encoder and decoder are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import assert_same_outputs, feeds_for, op_counts, optimize_with, parse, run_ort
from tests.rewrite_checks import check_pass, dims, verdicts
from tests.zoo_models import zoo_model

PASS = "linear-to-pointwise-conv"
SOME = settings(max_examples=max(settings().max_examples // 2, 1), deadline=None)
REGIONS = {
    "none": [],
    "relu": ["{o} = Relu({i})"],
    "gelu": ["{o}_d = Div({i}, sqrt2)", "{o}_e = Erf({o}_d)", "{o}_p = Add({o}_e, one)", "{o}_m = Mul({i}, {o}_p)",
             "{o} = Mul({o}_m, half)"],
    "scaled": ["{o}_s = Mul(half, {i})", "{o} = Add({o}_s, one)"],
    "clip": ["{o} = Clip({i}, lo, hi)"],
    "per-channel": ["{o} = Mul({i}, scale{n})"],  # a channel constant: re-laid as [1, C, 1, 1]
    "per-row": ["{o} = Mul({i}, rows{n})"],  # varies along H: the layout matters, the chain stops
}


def _values(shape, rng, dtype: str = "float") -> str:
    values = np.round(rng.standard_normal(int(np.prod(shape))) * (5 if dtype == "int32" else 1), 3)
    if dtype == "float16":  # the text format takes float16 values as their bit patterns
        return ", ".join(str(int(np.float16(v).view(np.uint16))) for v in values)
    return ", ".join(str(int(v)) if dtype == "int32" else str(float(v)) for v in values)


def model_text(rng, *, dtype="float", b="B", c=3, h=2, w=2, widths=(4,), layouts=("plain",), biases=([4],),
               regions=(), softmax=False, close=(0, 3, 1, 2), extra_output=None, weight_input=False,
               bias_first=False) -> str:
    """A channels-last Linear chain in ONNX text; the closing Transpose is node ``close``."""
    inputs = [f"{dtype}[{dims([b, c, h, w])}] x"]
    scalars = {"sqrt2": 1.4142135, "one": 1.0, "half": 0.5, "lo": -0.5, "hi": 0.75}
    inits = [] if dtype == "int32" else [
        f"{dtype} {name} = {{{int(np.float16(v).view(np.uint16)) if dtype == 'float16' else v}}}"
        for name, v in scalars.items()]
    body = ["t = Transpose<perm = [0, 2, 3, 1]>(x)"]
    cur = "t"
    if softmax:
        body.append("s = Softmax<axis = -1>(t)")
        cur = "s"
    k = c
    for i, n in enumerate(widths):
        stored = [k, n] if layouts[i] == "plain" else [n, k]
        if weight_input and i == len(widths) - 1:
            inputs.append(f"{dtype}[{dims(stored)}] w{i}")
        else:
            inits.append(f"{dtype}[{dims(stored)}] w{i} = {{{_values(stored, rng, dtype)}}}")
        weight = f"w{i}"
        if layouts[i] != "plain":
            body.append(f"wt{i} = Transpose<perm = [1, 0]>(w{i})")
            weight = f"wt{i}"
        body.append(f"[mm{i}] p{i} = MatMul({cur}, {weight})")
        cur = f"p{i}"
        bias = biases[i]
        if bias is not None:
            inits.append(f"{dtype}{f'[{dims(bias)}]' if bias else ''} b{i} = {{{_values(bias, rng, dtype)}}}")
            body.append(f"[add{i}] q{i} = Add({f'b{i}, p{i}' if bias_first else f'p{i}, b{i}'})")
            cur = f"q{i}"
        if i < len(regions):
            kind = regions[i]
            if kind == "per-channel":
                shape = [1, 1, n] if i % 2 else [n]
                inits.append(f"{dtype}[{dims(shape)}] scale{i} = {{{_values(shape, rng, dtype)}}}")
            if kind == "per-row":
                inits.append(f"{dtype}[{h},1,1] rows{i} = {{{_values([h], rng, dtype)}}}")
            lines = REGIONS[kind]
            if lines:
                body.extend(line.format(i=cur, o=f"r{i}", n=i) for line in lines)
                cur = f"r{i}"
        k = n
    body.append(f"[close] y = Transpose<perm = [{', '.join(map(str, close))}]>({cur})")
    out_shape = [[b, h, w, k][p] if p else b for p in close]
    outputs = [f"{dtype}[{dims(out_shape)}] y"]
    if extra_output:
        name, shape = extra_output
        outputs.append(f"{dtype}[{dims(shape)}] {name}_out")
        body.append(f"{name}_out = Neg({name})")
    text = f"g ({', '.join(inputs)}) => ({', '.join(outputs)}) <{', '.join(inits)}> {{\n  " + \
        "\n  ".join(body) + "\n}"
    return text


@st.composite
def chains(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    count = draw(st.integers(1, 3))
    widths = tuple(draw(st.integers(1, 5)) for _ in range(count))
    bias = st.sampled_from(["N", "1N", "111N", "scalar", "1", None])
    shapes = {"N": lambda n: [n], "1N": lambda n: [1, n], "111N": lambda n: [1, 1, 1, n], "scalar": lambda n: [],
              "1": lambda n: [1], None: lambda n: None}
    kw = dict(dtype="float", b=draw(st.sampled_from(["B", 1, 2])),
              c=draw(st.integers(1, 4)), h=draw(st.integers(1, 3)), w=draw(st.integers(1, 3)), widths=widths,
              layouts=tuple(draw(st.sampled_from(["plain", "transposed"])) for _ in widths),
              biases=tuple(shapes[draw(bias)](n) for n in widths),
              regions=tuple(draw(st.sampled_from(["none", "relu", "gelu", "scaled", "clip", "per-channel"]))
                            for _ in widths[:count - 1 + draw(st.integers(0, 1))]),
              softmax=draw(st.booleans()), bias_first=draw(st.booleans()))
    return model_text(rng, **kw), kw


@SOME
@given(chains())
def test_linear_chain_becomes_pointwise_convs(case):
    text, kw = case
    note(text)
    model = parse(text)
    before = op_counts(model)
    optimized = check_pass(model, PASS, expect={"Conv": len(kw["widths"]), "MatMul": 0})
    after = op_counts(optimized)
    region_adds = sum(REGIONS[r].count("{o}_p = Add({o}_e, one)") + ("scaled" == r) for r in kw["regions"])
    assert after["Add"] == region_adds
    assert after["Transpose"] == 2  # the channels-last view and the moved closing Transpose
    for op in ("Relu", "Erf", "Clip", "Softmax", "Div", "Mul"):
        assert after[op] == before[op]
    for node in optimized.graph.node:  # channel constants now broadcast over NCHW
        if node.op_type == "Mul" and node.input[1].startswith("scale"):
            (relaid,) = [t for t in optimized.graph.initializer if t.name == node.input[1]]
            channels = kw["widths"][int(node.input[1][len("scale")])]
            assert channels == 1 or list(relaid.dims) == [1, channels, 1, 1]
    (moved,) = [n for n in optimized.graph.node if n.op_type == "Transpose" and n.input[0] != "x"]
    assert moved.input[0] == ("s" if kw["softmax"] else "t")
    applies, message = verdicts(model, PASS)["close"]
    assert applies and "written as 1x1 Conv" in message, message


def test_convnext_block_mlp_is_two_convs_around_the_gelu():
    """The zoo ConvNeXt block's form: Softmax stands in for its LayerNorm (both normalize
    the channels, so neither can move to NCHW); pw1 + GELU + pw2 become Conv, GELU, Conv."""
    model = parse(model_text(np.random.default_rng(0), c=4, h=3, w=3, widths=(8, 4), layouts=("plain", "plain"),
                             biases=([8], [4]), regions=("gelu",), softmax=True))
    optimized = check_pass(model, PASS, expect={"Conv": 2, "MatMul": 0, "Transpose": 2, "Erf": 1})
    order = [n.op_type for n in optimized.graph.node]
    assert order.index("Softmax") < order.index("Transpose", 1) < order.index("Conv") < order.index("Erf") < \
        len(order) - 1 - order[::-1].index("Conv")
    assert verdicts(model, PASS)["close"] == (
        True, "2 Linear layers before Transpose [0, 3, 1, 2] written as 1x1 Conv, the Transpose moved before them")


def test_full_pipeline_cancels_the_transposes_without_a_norm_between():
    """Without a channel op between, the moved Transpose meets the channels-last one and
    merge-transposes removes both: the Linear chain is plain NCHW convolutions."""
    model = parse(model_text(np.random.default_rng(1), b="B", widths=(5, 3), layouts=("transposed", "plain"),
                             biases=([5], [1, 3]), regions=("relu",)))
    optimized, _ = optimize_with(model)
    counts = op_counts(optimized)
    assert counts["Transpose"] == 0 and counts["MatMul"] == 0 and counts["Conv"] == 2, dict(counts)
    check_pass(model, PASS, expect={"Conv": 2})


def test_float16_chain_is_rewritten_and_matches():
    """float16 (TensorRT's type) is rewritten too; the 1x1 Conv's float16 accumulation is
    compared at float16 precision."""
    model = parse(model_text(np.random.default_rng(4), dtype="float16", c=4, h=3, w=3, widths=(8, 4),
                             layouts=("transposed", "plain"), biases=([8], [4]), regions=("gelu", "per-channel")))
    optimized, _ = optimize_with(model, [PASS, "infer-shapes"])
    assert op_counts(optimized)["Conv"] == 2 and op_counts(optimized)["MatMul"] == 0
    for feeds in feeds_for(model):
        expected, got = run_ort(model, feeds)["y"], run_ort(optimized, feeds)["y"]
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-2)


NEAR_MISSES = {
    "another closing perm": (dict(close=(0, 3, 2, 1)), "is not [0, 3, 1, 2]"),
    "bias varies along H": (dict(h=2, biases=([1, 2, 1, 4],)), "varies along an axis other than the last"),
    "Linear result read elsewhere": (dict(extra_output=("q0", ["B", 2, 2, 4])), "is also read by Neg"),
    "MatMul result read elsewhere": (dict(extra_output=("p0", ["B", 2, 2, 4])), "the MatMul result must stay"),
    "weight is an input": (dict(weight_input=True), "weight is not a constant"),
    "integer Linear": (dict(dtype="int32"), "element type is not float16 or float32"),
    "per-row constant after the Linear": (dict(regions=("per-row",)), "input comes from Mul, not a Linear"),
    "float64 Linear": (dict(dtype="double"), "element type is not float16 or float32"),
}


@pytest.mark.parametrize("why", NEAR_MISSES)
def test_near_misses_are_declined(why):
    kw, expected = NEAR_MISSES[why]
    model = parse(model_text(np.random.default_rng(2), **kw))
    applies, message = verdicts(model, PASS)["close"]
    assert not applies and expected in message, message
    if kw.get("dtype") != "int32":  # onnxruntime has no int32 MatMul kernel to compare with
        check_pass(model, PASS, unchanged=True)


@pytest.mark.parametrize("region, extra", [("per-row", None), ("relu", ("r0", ["B", 2, 2, 6]))])
def test_chain_stops_at_a_layout_dependent_region(region, extra):
    """A constant varying along H (or a region value read elsewhere) keeps the first Linear
    as it is; the second still becomes a Conv, with the Transpose moved just before it."""
    model = parse(model_text(np.random.default_rng(3), widths=(6, 4), layouts=("plain", "plain"),
                             biases=([6], [4]), regions=(region,), extra_output=extra))
    optimized = check_pass(model, PASS, expect={"Conv": 1, "MatMul": 1})
    (conv,) = [n for n in optimized.graph.node if n.op_type == "Conv"]
    assert conv.name == "mm1_conv"
    assert verdicts(model, PASS)["close"][1].startswith("a Linear layer before Transpose")


@pytest.mark.parametrize("name, rewrites", [("convnext", 6), ("encoder-tiny", 0), ("decoder-tiny", 0)])
def test_zoo_models_default_pipeline(name, rewrites):
    """The zoo ConvNeXt's six blocks each lose their MatMuls (pw1 and pw2 as Convs, outputs
    unchanged at batch 1 and 3); the transformers' Linears are on [batch, seq, hidden]
    tensors with no Transpose to NCHW after them, so the pass leaves them alone."""
    model = onnx.load(str(zoo_model(name)))
    optimized, report = optimize_with(model)
    assert {p.name: p.rewrites for p in report.passes}[PASS] == rewrites
    if rewrites:
        assert op_counts(optimized)["MatMul"] == 0 and op_counts(optimized)["Conv"] == op_counts(model)["Conv"] + 12
        assert_same_outputs(model, optimized, feeds_for(model, (1, 3)))
