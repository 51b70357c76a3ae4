"""merge-transposes: Transpose(Transpose(x)) becomes one Transpose, or nothing when they cancel.

Property: for random ranks, shapes (dynamic batch N), perms (sometimes the default,
reversed), the pair is replaced by one Transpose with the composed perm (none when it is
the identity), outputs match under onnxruntime at N = 1 and N = 3, and ``inspect`` says
so. Near misses (the middle tensor is read elsewhere or is a graph output) keep both.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import op_counts, optimize_with, parse, removed_by
from tests.rewrite_checks import check_pass, dims, verdicts

PASS = "merge-transposes"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))


@st.composite
def shapes_and_perms(draw):
    rank = draw(st.integers(1, 5))
    shape = ["N"] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    p = draw(st.permutations(range(rank)))
    q = list(np.argsort(p)) if draw(st.booleans()) else draw(st.permutations(range(rank)))
    return shape, [int(i) for i in p], [int(i) for i in q], draw(st.booleans()), draw(st.booleans())


def _perm_attr(perm: list[int], default: bool) -> str:
    return "" if default else f"<perm = [{', '.join(map(str, perm))}]>"


def _pair_model(shape, p, q, p_default, q_default, middle: str = "private"):
    """``x -> Relu -> [first] Transpose -> t -> [second] Transpose -> Sigmoid -> y``; ``middle``
    "read elsewhere" adds ``z = Neg(t)`` as an output, "graph output" makes t one."""
    rank = len(shape)
    p = list(reversed(range(rank))) if p_default else p
    q = list(reversed(range(rank))) if q_default else q
    mid, out = [shape[i] for i in p], [shape[p[i]] for i in q]
    outputs = f"float[{dims(out)}] y"
    extra = ""
    if middle == "read elsewhere":
        outputs += f", float[{dims(mid)}] z"
        extra = "  z = Neg(t)\n"
    elif middle == "graph output":
        outputs += f", float[{dims(mid)}] t"
    body = (f"  a = Relu(x)\n  [first] t = Transpose{_perm_attr(p, p_default)}(a)\n"
            f"  [second] u = Transpose{_perm_attr(q, q_default)}(t)\n  y = Sigmoid(u)\n{extra}")
    return parse(f"g (float[{dims(shape)}] x) => ({outputs}) {{\n{body}}}"), p, q


@SOME
@given(shapes_and_perms())
def test_pair_is_merged_or_cancelled(case):
    shape, p, q, p_default, q_default = case
    model, p, q = _pair_model(shape, p, q, p_default, q_default)
    note(str((shape, p, q)))
    merged = [p[i] for i in q]
    identity = merged == list(range(len(merged)))
    optimized = check_pass(model, PASS, expect={"Transpose": 0 if identity else 1})
    if not identity:
        (t,) = [n for n in optimized.graph.node if n.op_type == "Transpose"]
        assert list(t.attribute[0].ints) == merged
    found = verdicts(model, PASS)
    applies, message = found["second"]
    assert applies and ("cancel" in message if identity else f"perm {merged}" in message)
    assert found["first"] == (False, "input is not produced by a Transpose")


@SOME
@given(shapes_and_perms(), st.sampled_from(["read elsewhere", "graph output"]))
def test_middle_tensor_needed_elsewhere_keeps_both(case, middle):
    model, _, _ = _pair_model(*case, middle=middle)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["second"]
    assert not applies and message.startswith("the first Transpose must stay")


def test_chain_of_three_collapses_to_one():
    model = parse("g (float[N,2,3,4] x) => (float[N,3,2,4] y) {\n a = Relu(x)\n"
                  " b = Transpose<perm = [0, 2, 3, 1]>(a)\n c = Transpose<perm = [0, 2, 3, 1]>(b)\n"
                  " d = Transpose<perm = [0, 3, 2, 1]>(c)\n y = Sigmoid(d)\n}")
    optimized = check_pass(model, PASS, expect={"Transpose": 1})
    optimized, _ = optimize_with(optimized, [PASS])
    assert op_counts(optimized)["Transpose"] == 1


def test_cancelling_pair_between_graph_input_and_output_keeps_one_identity():
    """Both cancel, but y must keep its name and x is a graph input: one identity stays."""
    model = parse("g (float[N,2,3] x) => (float[N,2,3] y) {\n [first] t = Transpose<perm = [0, 2, 1]>(x)\n"
                  " [second] y = Transpose<perm = [0, 2, 1]>(t)\n}")
    optimized = check_pass(model, PASS, expect={"Transpose": 1})
    (t,) = optimized.graph.node
    assert list(t.input) == ["x"] and list(t.output) == ["y"] and list(t.attribute[0].ints) == [0, 1, 2]
    assert "one identity Transpose kept" in verdicts(model, PASS)["second"][1]


def test_cancelling_pair_into_graph_output_keeps_the_name():
    model = parse("g (float[N,2,3] x) => (float[N,2,3] y) {\n [r] a = Relu(x)\n t = Transpose<perm = [0, 2, 1]>(a)\n"
                  " [second] y = Transpose<perm = [0, 2, 1]>(t)\n}")
    optimized, report = optimize_with(model, [PASS])
    assert [(n.op_type, list(n.output)) for n in optimized.graph.node] == [("Relu", ["y"])]
    assert removed_by(report, "second") == [PASS]


def test_default_perms_without_known_rank_decline():
    model = parse("g (float[N,2,3] x) => (float[N,2,3] y) {\n a = Relu(x)\n t = Transpose(a)\n"
                  " [second] u = Transpose(t)\n y = Sigmoid(u)\n}")
    from tests.helpers import inspect_pass
    finding = inspect_pass(model, PASS, infer_shapes=False)["second"][0]
    assert not finding.applies and "rank is unknown" in finding.message
    check_pass(model, PASS, expect={"Transpose": 0})  # with shapes inferred it cancels
