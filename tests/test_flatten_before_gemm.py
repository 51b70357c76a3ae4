"""flatten-before-gemm: the reshape feeding Gemm is written as Flatten(axis=1).

Property: x is [B, static dims] (B dynamic or static, rank 2-5); the reshape before Gemm is
``Reshape(x, [0, -1])``, ``[-1, rest]``, ``[0, rest]``, ``[B, -1]`` / ``[B, rest]`` (static
B), the raw-export form ``Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])`` (or a 1-D Gather
index without Unsqueeze), or a Flatten with axis spelled ``1 - rank``. After the pass a
Flatten(axis=1) feeds the Gemm and no Reshape is left; outputs match at B = 1 and B = 3
and ``inspect`` says so. Near misses: the reader is a MatMul, the Gemm reads it as B, a
target that splits the batch ([-1, a divisor of the rest]), ``allowzero=1``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import op_counts, parse
from tests.rewrite_checks import check_pass, dims, header, verdicts

PASS = "flatten-before-gemm"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))


def _floats(rng, count: int) -> str:
    return ", ".join(str(float(v)) for v in np.round(rng.standard_normal(count), 3))


@st.composite
def reshapes(draw, near_miss: str | None = None):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    opset = 17 if near_miss == "allowzero" else draw(st.sampled_from([11, 13, 17]))
    batch = draw(st.sampled_from(["N", "N", 1, 2, 3]))
    rest = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 4)))]
    shape, size, k = [batch] + rest, math.prod(rest), draw(st.integers(1, 3))
    forms = ["[0, -1]", "[-1, rest]", "[0, rest]", "shape-of-x", "shape-of-x-1d", "flatten"] + \
        (["[B, -1]", "[B, rest]"] if isinstance(batch, int) else [])
    form = draw(st.sampled_from(forms))
    if near_miss in ("splits the batch", "allowzero"):
        form = "[-1, rest]"
    inits, body = [], ["  a = Relu(x)"]
    rows = batch
    if form == "flatten":
        body.append(f"  [target] r = Flatten<axis = {1 - len(shape)}>(a)")
    elif form.startswith("shape-of-x"):
        body.append("  s = Shape(a)")
        if form == "shape-of-x":
            inits += ["int64 zero = {0}", "int64[1] minus_one = {-1}"]
            body.append("  d = Gather<axis = 0>(s, zero)")
            body.append("  d1 = Unsqueeze(d, ax0)" if opset >= 13 else "  d1 = Unsqueeze<axes = [0]>(d)")
            if opset >= 13:
                inits.append("int64[1] ax0 = {0}")
        else:
            inits += ["int64[1] zero = {0}", "int64[1] minus_one = {-1}"]
            body.append("  d1 = Gather<axis = 0>(s, zero)")
        body += ["  t = Concat<axis = 0>(d1, minus_one)", "  [target] r = Reshape(a, t)"]
    else:
        target = {"[0, -1]": [0, -1], "[-1, rest]": [-1, size], "[0, rest]": [0, size],
                  "[B, -1]": [batch, -1], "[B, rest]": [batch, size]}[form]
        cols = size
        if near_miss == "splits the batch":
            divisors = [d for d in range(1, size) if size % d == 0 and d < size]
            if not divisors:
                near_miss = None
            else:
                cols = draw(st.sampled_from(divisors))
                target = [-1, cols]
                rows = f"{batch}x{size // cols}" if isinstance(batch, str) else batch * size // cols
        size = cols
        inits.append(f"int64[2] t = {{{target[0]}, {target[1]}}}")
        attr = "<allowzero = 1>" if near_miss == "allowzero" else ""
        body.append(f"  [target] r = Reshape{attr}(a, t)")
    trans_b = draw(st.booleans())
    inits.append(f"float[{dims([k, size] if trans_b else [size, k])}] w = {{{_floats(rng, k * size)}}}")
    inputs = [f"float[{dims(shape)}] x"]
    if near_miss == "MatMul reader":
        body.append("  y = MatMul(r, w)")
        out = [rows, k]
        inits[-1] = f"float[{dims([size, k])}] w = {{{_floats(rng, k * size)}}}"
    elif near_miss == "read as B":
        inputs.append(f"float[2,{dims([rows])}] p")
        body.append("  y = Gemm(p, r)")
        out = [2, size]
    else:
        body.append(f"  y = Gemm{'<transB = 1>' if trans_b else ''}(r, w)")
        out = [rows, k]
    text = header(opset) + f"g ({', '.join(inputs)}) => (float[{dims(out)}] y) <{', '.join(inits)}> {{\n" + \
        "\n".join(body) + "\n}"
    return text, form, near_miss


@SOME
@given(reshapes())
def test_reshape_before_gemm_becomes_flatten(case):
    text, form, _ = case
    note(text)
    model = parse(text)
    optimized = check_pass(model, PASS, expect={"Reshape": 0, "Flatten": 1, "Gemm": 1})
    (flatten,) = [n for n in optimized.graph.node if n.op_type == "Flatten"]
    assert [(a.name, a.i) for a in flatten.attribute] == [("axis", 1)]
    if form.startswith("shape-of-x"):
        assert op_counts(optimized)["Shape"] == 0, "the shape subgraph should be dead"
    applies, message = verdicts(model, PASS)["target"]
    assert applies and ("axis 1" in message or "Flatten(axis=1)" in message), message


@SOME
@given(st.sampled_from(["MatMul reader", "read as B", "splits the batch", "allowzero"])
       .flatmap(lambda why: reshapes(near_miss=why)))
def test_near_misses_keep_the_reshape(case):
    text, form, why = case
    note(text)
    if why is None:
        return
    model = parse(text)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["target"]
    expected = {"MatMul reader": "not read only as Gemm's input A", "read as B": "not read only as Gemm's input A",
                "splits the batch": "may not be [dim 0, rest]", "allowzero": "allowzero=1"}[why]
    assert not applies and expected in message, message


def test_flatten_axis_one_is_left_alone():
    model = parse("g (float[N,2,3] x) => (float[N,2] y) <float[6,2] w = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6}> {\n"
                  " [target] r = Flatten<axis = 1>(x)\n y = Gemm(r, w)\n}")
    assert verdicts(model, PASS)["target"] == (False, "already Flatten(axis=1)")


def test_resnet_style_view_export():
    """What torch exports for ``x.view(x.size(0), -1)`` at opset 14, before a Linear."""
    text = header(14) + ("g (float[N,4,1,1] x) => (float[N,3] y) <int64 zero = {0}, int64[1] ax0 = {0}, "
                         "int64[1] minus_one = {-1}, float[3,4] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, "
                         "float[3] b = {1, 2, 3}> {\n s = Shape(x)\n d = Gather<axis = 0>(s, zero)\n"
                         " d1 = Unsqueeze(d, ax0)\n t = Concat<axis = 0>(d1, minus_one)\n [target] r = Reshape(x, t)\n"
                         " y = Gemm<transB = 1>(r, w, b)\n}")
    model = parse(text)
    optimized = check_pass(model, PASS, expect={"Reshape": 0, "Shape": 0, "Gather": 0, "Concat": 0})
    assert op_counts(optimized) == {"Flatten": 1, "Gemm": 1}
    onnx.checker.check_model(optimized, full_check=True)
