"""push-transposes: Transpose -> elementwise ops -> Transpose loses a Transpose (or both).

Property: random rank, shape (dynamic batch N), perms, and a chain of 1-3 elementwise ops
(unary ops, Clip with scalar bounds, and binary ops whose other operand is a constant of
random rank and broadcast shape, sometimes one that grows the result, on either side);
after the pass the first Transpose is gone, the second is gone too when the composed perm
is the identity, outputs match at N = 1 and N = 3 and ``inspect`` says so. Near misses: an
intermediate read elsewhere or a graph output, an operand that is a graph input.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import inspect_pass, parse
from tests.rewrite_checks import check_pass, dims, verdicts

PASS = "push-transposes"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))
UNARY = ["Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Erf", "Softplus", "LeakyRelu<alpha = 0.1>",
         "HardSigmoid", "Cast<to = 1>"]
BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu"]


def _values(rng, shape, positive=False) -> str:
    v = np.round(rng.uniform(0.5, 2.0, size=shape) * 4) / 4
    if not positive:
        v = v * rng.choice([-1, 1], size=shape)
    return ", ".join(str(float(x)) for x in np.ravel(v))


@st.composite
def chains(draw, near_miss: str | None = None):
    """ONNX text of ``x -> Relu -> T(p) -> ops -> T(q) -> Sigmoid -> y`` and what to expect."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rank = draw(st.integers(2, 4))
    shape = ["N"] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    p = [int(i) for i in draw(st.permutations(range(rank)))]
    current = [shape[i] for i in p]
    inits, body, inputs = [], ["  a = Relu(x)", f"  [first] t0 = Transpose<perm = [{', '.join(map(str, p))}]>(a)"], []
    length = draw(st.integers(1, 3))
    for k in range(1, length + 1):
        prev, out = f"t{k - 1}", f"t{k}"
        kind = draw(st.sampled_from(["unary", "clip", "binary", "binary", "square"]))
        if near_miss == "operand is an input" and k == length:
            kind = "input"
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            body.append(f"  {out} = {op}({prev})")
        elif kind == "clip":
            low, high = sorted(np.round(rng.uniform(-1, 1, 2), 2))
            inits += [f"float lo{k} = {{{low}}}", f"float hi{k} = {{{high}}}"]
            body.append(f"  {out} = Clip({prev}, lo{k}, hi{k})")
        elif kind == "square":
            body.append(f"  {out} = Mul({prev}, {prev})")
        elif kind == "input":
            inputs.append(f"float[{dims(current)}] w")
            body.append(f"  {out} = Add({prev}, w)")
        else:
            op = draw(st.sampled_from(BINARY))
            crank = draw(st.integers(0, rank)) if op != "PRelu" else draw(st.integers(0, rank))
            cshape = []
            for d in current[rank - crank:]:
                if d == "N":
                    cshape.append(1)
                elif d == 1 and op != "PRelu" and draw(st.integers(0, 3)) == 0:
                    cshape.append(draw(st.integers(2, 3)))  # grows the result
                else:
                    cshape.append(d if draw(st.booleans()) else 1)
            tail = current[rank - crank:]
            current = current[:rank - crank] + [c if d == 1 else d for d, c in zip(tail, cshape)]
            inits.append(f"float{f'[{dims(cshape)}]' if cshape else ''} c{k} = {{{_values(rng, cshape, positive=op == 'Div')}}}")
            first = op in ("Sub", "Div", "Add", "Max") and draw(st.booleans()) and op != "PRelu"
            body.append(f"  {out} = {op}({f'c{k}, {prev}' if first else f'{prev}, c{k}'})")
    last = f"t{length}"
    extra_outputs = ""
    if near_miss == "intermediate read elsewhere":
        body.append("  z = Neg(t0)")
        extra_outputs = f", float[{dims([shape[i] for i in p])}] z"
    elif near_miss == "intermediate is a graph output":
        extra_outputs = f", float[{dims(current)}] {last}"
    q = [int(i) for i in (np.argsort(p) if draw(st.booleans()) else draw(st.permutations(range(rank))))]
    out_shape = [current[i] for i in q]
    body += [f"  [second] u = Transpose<perm = [{', '.join(map(str, q))}]>({last})", "  y = Sigmoid(u)"]
    init = f" <{', '.join(inits)}>" if inits else ""
    text = (f"g (float[{dims(shape)}] x{''.join(', ' + i for i in inputs)}) => "
            f"(float[{dims(out_shape)}] y{extra_outputs}){init} {{\n" + "\n".join(body) + "\n}")
    merged = [p[i] for i in q]
    return text, merged == list(range(rank))


@SOME
@given(chains())
def test_transpose_is_pushed_through_the_chain(case):
    text, cancels = case
    note(text)
    model = parse(text)
    check_pass(model, PASS, expect={"Transpose": 0 if cancels else 1})
    applies, message = verdicts(model, PASS)["second"]
    assert applies and ("both removed" if cancels else "merged with") in message, message


@SOME
@given(st.sampled_from(["intermediate read elsewhere", "intermediate is a graph output", "operand is an input"])
       .flatmap(lambda why: st.tuples(st.just(why), chains(near_miss=why))))
def test_near_misses_keep_both_transposes(case):
    why, (text, _) = case
    note(text)
    model = parse(text)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["second"]
    assert not applies
    expected = "neither on the chain nor a constant" if why == "operand is an input" else "an intermediate must stay"
    assert expected in message or "no single non-constant operand" in message, message


def test_constant_of_higher_rank_declines():
    model = parse("g (float[N,3] x) => (float[2,3,N] y) <float[2,1,1] c = {1, 2}> {\n a = Relu(x)\n"
                  " t = Transpose<perm = [1, 0]>(a)\n m = Add(t, c)\n [second] y = Transpose<perm = [0, 2, 1]>(m)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["second"] == (False, "Add constant 'c' has rank 3 > 2")


def test_non_elementwise_op_in_between_declines():
    model = parse("g (float[N,3,4] x) => (float[N,3,1] y) {\n t = Transpose<perm = [0, 2, 1]>(x)\n"
                  " m = ReduceMax<axes = [1], keepdims = 1>(t)\n [second] y = Transpose<perm = [0, 2, 1]>(m)\n}")
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["second"]
    assert not applies and "not through elementwise ops" in message


def test_adjacent_transposes_are_left_to_merge_transposes():
    model = parse("g (float[N,3,4] x) => (float[N,3,4] y) {\n a = Relu(x)\n t = Transpose<perm = [0, 2, 1]>(a)\n"
                  " [second] y = Transpose<perm = [0, 2, 1]>(t)\n}")
    assert inspect_pass(model, PASS)["second"][0].message == \
        "input is a Transpose directly (merge-transposes merges those)"


def test_constant_node_operand_and_graph_output_name():
    """A Constant-node operand is permuted too; the cancelled second Transpose's output name stays."""
    model = parse("g (float[N,2,3] x) => (float[N,2,3] y) {\n a = Relu(x)\n t = Transpose<perm = [0, 2, 1]>(a)\n"
                  " c = Constant<value = float[3,1] {1, 2, 3}>()\n m = Mul(t, c)\n"
                  " [second] y = Transpose<perm = [0, 2, 1]>(m)\n}")
    optimized = check_pass(model, PASS, expect={"Transpose": 0})
    assert [n.op_type for n in optimized.graph.node if n.op_type != "Constant"] == ["Relu", "Mul"]
    assert optimized.graph.node[-1].output[0] == "y"
