"""collapse-reshapes: Reshape(Reshape/Flatten/Squeeze/Unsqueeze(x), b) becomes one Reshape.

Property: x is [N, static dims]; the inner op is a Reshape (to a random factorisation,
with 0 or -1 for the batch and sometimes a -1 elsewhere), a Flatten, a Squeeze of a
static 1-dim or an Unsqueeze; the outer target is another factorisation whose entries
are static values, 0 (copying an intermediate dim, from the batch or from a static dim
equal to the final one) or a -1, with allowzero 0 or 1. After the pass one Reshape is left,
outputs match at N = 1 and N = 3, and ``inspect`` says so. Near misses: the intermediate
is read elsewhere or is a graph output.
"""

from __future__ import annotations

import math

from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import parse
from tests.rewrite_checks import check_pass, dims, verdicts

PASS = "collapse-reshapes"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))


def _ints(values) -> str:
    return ", ".join(str(v) for v in values)


@st.composite
def factorisation(draw, total: int):
    parts = []
    while total > 1 and len(parts) < 3 and draw(st.booleans()):
        divisors = [d for d in range(2, total + 1) if total % d == 0]
        d = draw(st.sampled_from(divisors))
        parts.append(d)
        total //= d
    parts.append(total)
    return draw(st.permutations(parts))


@st.composite
def chains(draw, middle: str = "private"):
    shape = ["N"] + [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    size = math.prod(shape[1:])
    inits, inner_target = [], None
    kind = draw(st.sampled_from(["Reshape", "Reshape", "Flatten", "Unsqueeze", "Squeeze"]))
    ones = [i for i, d in enumerate(shape) if d == 1 and i > 0]
    if kind == "Squeeze" and not ones:
        kind = "Flatten"
    if kind == "Reshape":
        rest = list(draw(factorisation(size)))
        mid = ["N"] + rest
        inner_target = [0] + rest if draw(st.booleans()) else [-1] + rest
        if inner_target[0] == 0 and draw(st.booleans()):
            inner_target[draw(st.integers(1, len(rest)))] = -1
        inits.append(f"int64[{len(inner_target)}] s1 = {{{_ints(inner_target)}}}")
        inner = "  m = Reshape(a, s1)"
    elif kind == "Flatten":
        mid, inner = ["N", size], "  m = Flatten<axis = 1>(a)"
    elif kind == "Unsqueeze":
        axis = draw(st.integers(1, len(shape)))
        mid = shape[:axis] + [1] + shape[axis:]
        inits.append(f"int64[1] ax = {{{axis}}}")
        inner = "  m = Unsqueeze(a, ax)"
    else:
        axis = draw(st.sampled_from(ones))
        mid = shape[:axis] + shape[axis + 1:]
        inits.append(f"int64[1] ax = {{{axis}}}")
        inner = "  m = Squeeze(a, ax)"
    final_rest = list(draw(factorisation(size)))
    final = ["N"] + final_rest
    allowzero = draw(st.integers(0, 3)) == 0
    batch_copyable = not inner_target or inner_target[0] == 0  # the inner -1 hides N from shapes
    target = [-1 if allowzero or not batch_copyable or draw(st.booleans()) else 0] + final_rest
    for i in range(1, len(target)):
        copyable = i < len(mid) and mid[i] == final[i] and not (inner_target and inner_target[i] == -1)
        if not allowzero and copyable and draw(st.booleans()):
            target[i] = 0
    if target[0] == 0 and not allowzero and draw(st.booleans()):
        target[draw(st.integers(1, len(target) - 1))] = -1
    inits.append(f"int64[{len(target)}] s2 = {{{_ints(target)}}}")
    outputs = f"float[{dims(final)}] y"
    extra = ""
    if middle == "read elsewhere":
        outputs += f", float[{dims(mid)}] z"
        extra = "\n  z = Neg(m)"
    elif middle == "graph output":
        outputs += f", float[{dims(mid)}] m"
    attr = "<allowzero = 1>" if allowzero else ""
    text = (f"g (float[{dims(shape)}] x) => ({outputs}) <{', '.join(inits)}> {{\n  a = Relu(x)\n{inner}\n"
            f"  [outer] r = Reshape{attr}(m, s2)\n  y = Sigmoid(r){extra}\n}}")
    return text, kind


@SOME
@given(chains())
def test_chain_collapses_into_one_reshape(case):
    text, kind = case
    note(text)
    model = parse(text)
    check_pass(model, PASS, expect={"Reshape": 1, "Flatten": 0, "Squeeze": 0, "Unsqueeze": 0})
    applies, message = verdicts(model, PASS)["outer"]
    assert applies and message.startswith(f"{kind} then Reshape"), message


@SOME
@given(st.sampled_from(["read elsewhere", "graph output"]).flatmap(lambda m: chains(middle=m)))
def test_intermediate_needed_elsewhere_is_kept(case):
    text, kind = case
    model = parse(text)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["outer"]
    assert not applies and message.startswith(f"the inner {kind} must stay"), message


def test_zero_copying_an_unknown_intermediate_dim_declines():
    """[N,2,3] -> [-1, 3] is [2N, 3]; the outer 0 copies 2N, which x's dims cannot say."""
    model = parse("g (float[N,2,3] x) => (float[M,3] y) <int64[2] s1 = {-1, 3}, int64[2] s2 = {0, 3}> {\n"
                  " a = Relu(x)\n m = Reshape(a, s1)\n [outer] y = Reshape(m, s2)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["outer"] == (False, "target [0, 3] copies intermediate dim 0, which is not known")


def test_zero_copying_a_positive_inner_entry_is_replaced_by_it():
    model = parse("g (float[N,6] x) => (float[N,2,3] y) <int64[3] s1 = {0, 2, 3}, int64[3] s2 = {0, 0, 3}> {\n"
                  " a = Relu(x)\n m = Reshape(a, s1)\n [outer] y = Reshape(m, s2)\n}")
    optimized = check_pass(model, PASS, expect={"Reshape": 1})
    assert verdicts(model, PASS)["outer"][1].endswith("collapsed into one Reshape to [0, 2, 3]")
    target = [t for t in optimized.graph.initializer if t.name not in ("s1", "s2")]
    assert len(target) == 1 and list(onnx_numpy(target[0])) == [0, 2, 3]


def test_non_constant_target_declines_unless_allowzero():
    text = ("g (float[N,6] x, int64[3] s) => (float[A,B,C] y) <int64[2] s1 = {0, 6}> {\n"
            " a = Relu(x)\n m = Reshape(a, s1)\n [outer] y = Reshape@(m, s)\n}")
    model = parse(text.replace("@", ""))
    assert verdicts(model, PASS)["outer"] == \
        (False, "target shape is not constant: a 0 in it would copy an intermediate dim")
    model = parse(text.replace("@", "<allowzero = 1>"))
    assert verdicts(model, PASS)["outer"][0]


def test_chain_to_graph_output_keeps_the_name():
    model = parse("g (float[N,2,3] x) => (float[N,6] y) <int64[2] s2 = {-1, 6}> {\n a = Relu(x)\n"
                  " m = Flatten<axis = 2>(a)\n [outer] y = Reshape(m, s2)\n}")
    optimized = check_pass(model, PASS, expect={"Reshape": 1, "Flatten": 0})
    assert optimized.graph.node[-1].output[0] == "y"


def onnx_numpy(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)
