"""simplify-squeeze-unsqueeze: pairs on the same axes cancel, same-kind chains merge.

Property: x is [N, dims with some 1s]; the pattern is Unsqueeze(Squeeze), Squeeze(Unsqueeze)
(same axes: both go), Unsqueeze(Unsqueeze) or Squeeze(Squeeze) (one node on the merged
axes) with random axes, written negative at random, at opset 11 (``axes`` attribute) or
13/17 (``axes`` input). Outputs match at N = 1 and N = 3 and ``inspect`` says so. Near
misses: a pair on different axes (it moves a dim), an intermediate read elsewhere or a
graph output.
"""

from __future__ import annotations

from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import op_counts, parse
from tests.rewrite_checks import check_pass, dims, header, verdicts

PASS = "simplify-squeeze-unsqueeze"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))


def squeeze(shape, axes):
    return [d for i, d in enumerate(shape) if i not in axes]


def unsqueeze(shape, axes):
    out, it = [], iter(shape)
    for i in range(len(shape) + len(axes)):
        out.append(1 if i in axes else next(it))
    return out


def _spell(axes, rank, draw):
    """Axes as written: each one maybe negative."""
    return [a - rank if draw(st.booleans()) else a for a in axes]


@st.composite
def patterns(draw, near_miss: str | None = None):
    opset = draw(st.sampled_from([11, 13, 17]))
    shape = ["N"] + [draw(st.sampled_from([1, 1, 2, 3])) for _ in range(draw(st.integers(0, 3)))]
    ones = [i for i, d in enumerate(shape) if d == 1]
    kinds = ["Squeeze(Unsqueeze)", "Unsqueeze(Unsqueeze)"] + \
        (["Unsqueeze(Squeeze)"] if ones else []) + (["Squeeze(Squeeze)"] if len(ones) >= 2 else [])
    if near_miss == "different axes":
        kinds = [k for k in kinds if k == "Unsqueeze(Squeeze)"] or ["Squeeze(Unsqueeze)"]
    kind = draw(st.sampled_from(kinds))
    inner_op, outer_op = kind[kind.index("(") + 1:-1], kind[:kind.index("(")]
    rank = len(shape)
    if inner_op == "Squeeze":
        first = sorted(draw(st.sets(st.sampled_from(ones), min_size=1, max_size=len(ones) - (outer_op == "Squeeze"))))
        mid = squeeze(shape, first)
    else:
        k = draw(st.integers(1, 2))
        first = sorted(draw(st.sets(st.integers(0, rank + k - 1), min_size=k, max_size=k)))
        mid = unsqueeze(shape, first)
    if outer_op == "Unsqueeze" and inner_op == "Squeeze":
        second = list(first)  # cancels
        if near_miss == "different axes":
            moved = [a for a in range(len(shape)) if a not in first]
            if not moved:
                near_miss = None
            else:
                second = sorted(set(first[1:]) | {draw(st.sampled_from(moved))})
        out = unsqueeze(mid, second)
    elif outer_op == "Squeeze" and inner_op == "Unsqueeze":
        second = list(first)
        if near_miss == "different axes":
            candidates = [i for i, d in enumerate(mid) if d == 1 and i not in first]
            if candidates:
                second = sorted(set(first[1:]) | {draw(st.sampled_from(candidates))})
            else:
                near_miss = None
        out = squeeze(mid, second)
    elif outer_op == "Unsqueeze":
        k = draw(st.integers(1, 2))
        second = sorted(draw(st.sets(st.integers(0, len(mid) + k - 1), min_size=k, max_size=k)))
        out = unsqueeze(mid, second)
    else:
        mid_ones = [i for i, d in enumerate(mid) if d == 1]
        second = sorted(draw(st.sets(st.sampled_from(mid_ones), min_size=1, max_size=len(mid_ones))))
        out = squeeze(mid, second)
    first_written = _spell(first, len(shape) if inner_op == "Squeeze" else len(mid), draw)
    second_written = _spell(second, len(mid) if outer_op == "Squeeze" else len(out), draw)
    inits = []

    def call(op, source, axes, name):
        if opset < 13:
            return f"{op}<axes = [{', '.join(map(str, axes))}]>({source})"
        inits.append(f"int64[{len(axes)}] {name} = {{{', '.join(map(str, axes))}}}")
        return f"{op}({source}, {name})"

    outputs, extra = f"float[{dims(out)}] y", ""
    if near_miss == "read elsewhere":
        outputs += f", float[{dims(mid)}] z"
        extra = "\n  z = Neg(m)"
    elif near_miss == "graph output":
        outputs += f", float[{dims(mid)}] m"
    body = (f"  a = Relu(x)\n  m = {call(inner_op, 'a', first_written, 'ax1')}\n"
            f"  [outer] r = {call(outer_op, 'm', second_written, 'ax2')}\n  y = Sigmoid(r){extra}")
    init = f" <{', '.join(inits)}>" if inits else ""
    text = header(opset) + f"g (float[{dims(shape)}] x) => ({outputs}){init} {{\n{body}\n}}"
    return text, inner_op, outer_op, near_miss


@SOME
@given(patterns())
def test_pairs_cancel_and_chains_merge(case):
    text, inner_op, outer_op, _ = case
    note(text)
    model = parse(text)
    if inner_op != outer_op:
        check_pass(model, PASS, expect={"Squeeze": 0, "Unsqueeze": 0})
        applies, message = verdicts(model, PASS)["outer"]
        assert applies and message.endswith("cancel: both removed"), message
    else:
        optimized = check_pass(model, PASS, expect={outer_op: 1})
        applies, message = verdicts(model, PASS)["outer"]
        assert applies and "merged into one" in message, message
        (node,) = [n for n in optimized.graph.node if n.op_type == outer_op]
        assert (len(node.input) == 2) == (optimized.opset_import[0].version >= 13)


@SOME
@given(st.sampled_from(["different axes", "read elsewhere", "graph output"]).flatmap(lambda m: patterns(near_miss=m)))
def test_near_misses_are_kept(case):
    text, inner_op, outer_op, why = case
    note(text)
    model = parse(text)
    if why is None:  # no different axes exist for this shape: nothing to test
        return
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["outer"]
    assert not applies
    assert ("differ" in message) if why == "different axes" else message.startswith(f"the inner {inner_op} must stay")


def test_squeeze_without_axes_needs_a_static_shape():
    dynamic = parse("g (float[N,3] x) => (float[N,3] y) <int64[1] ax = {1}> {\n a = Relu(x)\n"
                    " m = Unsqueeze(a, ax)\n [outer] r = Squeeze(m)\n y = Sigmoid(r)\n}")
    check_pass(dynamic, PASS, unchanged=True)
    assert "not known" in verdicts(dynamic, PASS)["outer"][1]
    static = parse("g (float[2,3] x) => (float[2,3] y) <int64[1] ax = {1}> {\n a = Relu(x)\n"
                   " m = Unsqueeze(a, ax)\n [outer] r = Squeeze(m)\n y = Sigmoid(r)\n}")
    check_pass(static, PASS, expect={"Squeeze": 0, "Unsqueeze": 0})


def test_pair_from_graph_input_to_graph_output_is_kept():
    model = parse("g (float[N,1,3] x) => (float[N,1,3] y) <int64[1] ax = {1}> {\n m = Squeeze(x, ax)\n"
                  " [outer] y = Unsqueeze(m, ax)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["outer"][1] == "it would join a graph input or constant straight to a graph output"


def test_encoder_attention_mask_unsqueezes_merge():
    """mask[:, None, None, :] exports as two Unsqueezes: they become one on axes [1, 2]."""
    model = parse(header(14) + "g (int64[B,S] mask) => (float[B,1,1,S] y) <int64[1] a1 = {1}, int64[1] a2 = {2}> {\n"
                  " u1 = Unsqueeze(mask, a1)\n [outer] u2 = Unsqueeze(u1, a2)\n y = Cast<to = 1>(u2)\n}")
    optimized = check_pass(model, PASS, expect={"Unsqueeze": 1})
    assert op_counts(optimized)["Unsqueeze"] == 1
    assert verdicts(model, PASS)["outer"][1] == "Unsqueeze axes [1] then [2] merged into one Unsqueeze on axes [1, 2]"


# -- a reduction without keepdims, then an Unsqueeze of the same axes ----------------------

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"]


@st.composite
def reductions(draw, near_miss: str | None = None):
    opset = draw(st.sampled_from([11, 13, 18]))
    shape = ["N"] + [draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 3)))]
    rank = len(shape)
    op = draw(st.sampled_from(REDUCTIONS))
    if op.startswith("Arg"):
        axes = [draw(st.integers(0, rank - 1))]
    else:
        # a scalar intermediate cannot be declared in ONNX text, so a read one keeps a dim
        axes = sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1,
                                   max_size=rank - (near_miss == "read elsewhere"))))
    kept = [d for i, d in enumerate(shape) if i not in axes]
    unsqueezed = list(axes)
    if near_miss == "different axes":
        unsqueezed = sorted({(a + 1) % rank for a in axes})
        if unsqueezed == axes:
            unsqueezed = None
    written = [a - rank if draw(st.booleans()) else a for a in axes]
    inits = []
    if op.startswith("Arg"):
        reduce = f"{op}<axis = {written[0]}, keepdims = 0>(x)"
    elif opset >= 18 or (op == "ReduceSum" and opset >= 13):
        inits.append(f"int64[{len(axes)}] ra = {{{', '.join(map(str, written))}}}")
        reduce = f"{op}<keepdims = 0>(x, ra)"
    else:
        reduce = f"{op}<axes = [{', '.join(map(str, written))}], keepdims = 0>(x)"
    u = unsqueezed or axes
    if opset >= 13:
        inits.append(f"int64[{len(u)}] ua = {{{', '.join(map(str, u))}}}")
        unsqueeze_call = "Unsqueeze(r, ua)"
    else:
        unsqueeze_call = f"Unsqueeze<axes = [{', '.join(map(str, u))}]>(r)"
    out_dtype = "int64" if op.startswith("Arg") else "float"
    outputs, extra = f"{out_dtype}[{dims(unsqueeze(kept, u))}] y", ""
    if near_miss == "read elsewhere":
        outputs += f", {out_dtype}[{dims(kept)}] z"
        extra = "\n  z = Identity(r)"
    init = f" <{', '.join(inits)}>" if inits else ""
    text = header(opset) + (f"g (float[{dims(shape)}] x) => ({outputs}){init} {{\n  r = {reduce}\n"
                            f"  [outer] y = {unsqueeze_call}{extra}\n}}")
    return text, op, (unsqueezed is not None) if near_miss == "different axes" else True


@SOME
@given(reductions())
def test_reduction_then_unsqueeze_keeps_dims(case):
    text, op, _ = case
    note(text)
    model = parse(text)
    optimized = check_pass(model, PASS, expect={"Unsqueeze": 0, op: 1})
    (node,) = [n for n in optimized.graph.node if n.op_type == op]
    assert [a.i for a in node.attribute if a.name == "keepdims"] == [1]
    applies, message = verdicts(model, PASS)["outer"]
    assert applies and "keepdims=1" in message, message


@SOME
@given(st.sampled_from(["different axes", "read elsewhere"]).flatmap(lambda m: reductions(near_miss=m).map(
    lambda case: (*case, m))))
def test_reduction_near_misses_are_kept(case):
    text, op, testable, why = case
    note(text)
    if not testable:
        return
    model = parse(text)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["outer"]
    assert not applies and (("differ" in message) if why == "different axes" else "must stay" in message), message


def test_reduction_declines():
    def verdict(text):
        return verdicts(parse(text), PASS)["outer"]

    kept = verdict("""g (float[N,3] x) => (float[N,1,1] y) <int64[1] ua = {1}> {
      r = ReduceSum<keepdims = 1>(x)
      [outer] y = Unsqueeze(r, ua) }""")
    assert kept == (False, "the ReduceSum keeps its dims already")
    noop = verdict("""g (float[N,3] x) => (float[1,N,3] y) <int64[1] ua = {0}, int64[0] ra = {}> {
      r = ReduceSum<keepdims = 0, noop_with_empty_axes = 1>(x, ra)
      [outer] y = Unsqueeze(r, ua) }""")
    assert noop == (False, "the reduction has no axes and noop_with_empty_axes=1")
    dynamic = verdict("""g (float[N,3] x, int64[1] ra) => (float[N,1] y) <int64[1] ua = {1}> {
      r = ReduceSum<keepdims = 0>(x, ra)
      [outer] y = Unsqueeze(r, ua) }""")
    assert dynamic == (False, "the reduction's axes are not constant")


def test_reduction_of_every_axis_without_axes():
    model = parse(header(17) + """g (float[N,3] x) => (float[1,1] y) <int64[2] ua = {0, 1}> {
      r = ReduceMean<keepdims = 0>(x)
      [outer] y = Unsqueeze(r, ua) }""")
    check_pass(model, PASS, expect={"Unsqueeze": 0, "ReduceMean": 1})
