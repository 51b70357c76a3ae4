"""Fuzz target for untrusted models (issue 15, point 4).

Inputs: random valid graphs (tests/strategies.py), the edge-case corpus (tests/edge_models.py)
and byte-level mutations of both (flips, overwrites, truncations, insertions, deletions and
duplicated slices of the serialized protobuf). Each goes through load -> optimize -> save ->
lint of the saved file, in an output transaction as the CLI runs it, and must end in success
or a ``FusekitError`` other than ``PassError`` (exit 70, a bug): no other exception, no hang (an alarm fails the example after
``HANG_SECONDS``), and on failure no output and no temp file left.

Profiles: the CI profile (default) runs ``CI_EXAMPLES`` inputs per strategy, about a minute;
``HYPOTHESIS_PROFILE=fuzz`` runs the profile's count (thousands), and ``-m slow`` runs
``SLOW_EXAMPLES`` per strategy whatever the profile. ``FUSEKIT_FUZZ_STATS=FILE`` appends
one JSON line of outcome counts and seconds per test (the README's figures).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fusekit import api, outputs
from fusekit.errors import FusekitError
from fusekit.lint import lint_model
from tests import edge_models
from tests.strategies import onnx_models

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
CI_EXAMPLES, SLOW_EXAMPLES = 300, 5000
HANG_SECONDS = 60
SEEDS = [f().SerializeToString() for f in edge_models.CASES.values()]


class Hang(Exception):
    pass


@contextmanager
def alarm(seconds: int):
    def fire(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pipeline(data: bytes) -> str:
    """'ok' or the FusekitError's class name; any other exception propagates (a bug)."""
    with tempfile.TemporaryDirectory(prefix="fusekit-fuzz-") as folder:
        src, out = Path(folder, "in.onnx"), Path(folder, "out.onnx")
        src.write_bytes(data)
        try:
            with alarm(HANG_SECONDS), outputs.OutputTransaction() as txn:
                txn.reserve(out, "--output")
                txn.reserve(out.with_name(out.name + ".data"), "--output")
                result = api.run(src)
                result.save(out)
                lint_model(txn.readable(out))
            outcome = "ok"
        except FusekitError as exc:
            outcome = type(exc).__name__
            assert not out.exists(), "a failed run left its output"
        assert list(outputs.temp_files(Path(folder))) == [], "a temp file was left"
        assert src.read_bytes() == data, "the input was modified"
        return outcome


@st.composite
def mutated(draw) -> bytes:
    """A serialized model (random graph or edge case) with 1-4 byte-level mutations."""
    base = draw(st.one_of(st.sampled_from(SEEDS), onnx_models(max_steps=6).map(lambda m: m.SerializeToString())))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            end = min(len(data), at + draw(st.integers(1, 32)))
            data[at:at] = data[at:end]
    return bytes(data)


STATS: dict[str, Counter] = {}


@pytest.fixture(scope="module", autouse=True)
def report_stats():
    start = time.perf_counter()
    yield
    path = os.environ.get("FUSEKIT_FUZZ_STATS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
                                "seconds": round(time.perf_counter() - start, 1),
                                **{k: dict(v) for k, v in STATS.items()}}) + "\n")


def _count(test: str, outcome: str) -> None:
    STATS.setdefault(test, Counter())[outcome] += 1


def _examples(slow: bool = False) -> settings:
    count = SLOW_EXAMPLES if slow else (settings().max_examples if FUZZ else CI_EXAMPLES)
    return settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck))


@_examples()
@given(onnx_models())
def test_random_valid_graphs_end_in_success(model):
    outcome = pipeline(model.SerializeToString())
    _count("valid", outcome)
    assert outcome == "ok"


def _corrupted(old: bytes, new: bytes) -> bytes:
    data = edge_models.unsorted_graph().SerializeToString()
    assert old in data
    return data.replace(old, new, 1)


# Found by the fuzz profile's first run (each crashed with another exception before the fix):
# a node name that is not UTF-8 (UnicodeDecodeError on export), a dim_param that is not UTF-8
# (onnx-graphsurgeon's ValueError), a Constant value of element type 0 (its exception).
NOT_UTF8_NAME = _corrupted(b"relu", b"r\x80lu")
NOT_UTF8_DIM = _corrupted(b"\x12\x01N", b"\x12\x01\x80")


def _with_empty_list_attribute() -> bytes:
    model = edge_models.unsorted_graph()
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("pads", [], attr_type=onnx.AttributeProto.INTS))
    return model.SerializeToString()


def _type_zero_constant() -> bytes:
    from onnx import TensorProto, helper

    value = TensorProto(name="c", dims=[1], data_type=0, raw_data=b"\0\0\0\0")
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=value)], "g", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


TYPE_ZERO_CONSTANT = _type_zero_constant()
# Found by the long fuzz run: a node writes the graph input it reads through other nodes (a
# cycle): ValueError from the pass manager's sort; now refused on load.
# and a Conv whose pads attribute is an empty list (onnx-graphsurgeon could not export it).
EMPTY_LIST_ATTRIBUTE = _with_empty_list_attribute()
CYCLE = _corrupted(b"\x12\x01y\x1a\x04relu", b"\x12\x01x\x1a\x04relu")
# b is float[5] with 16 bytes of raw_data: remove-noops read it and numpy could not reshape it
SHORT_RAW_DATA = (b'\x08\x08:\xe2\x01\n\x15\n\x01x\n\x01w\x12\x01m\x1a\x02mm"\x06MatMul\n\x13\n\x01m\n\x01b\x12\x01a'
                  b'\x1a\x03add"\x03Add\n\x14\n\x01a\x12\x01i\x1a\x02id"\x08Identity\n\x12\n\x01i\x12\x01y\x1a\x04relu"'
                  b'\x04Relu\x12\x01g*K\x08\x04\x08\x04\x10\x01B\x01wJ@-\x0bA>\x02\x19"\xbf\x01P\xc1\xbe\xad\xaa\x8b\xbf'
                  b'\x06\x8b\xa3\xbf\xa6b!?H\xc7\x14?\x1a\xb4\xa5?\xd8-A\xbf\xac4\xd8?{$\x93\xbe6\x86\xc9?\x1b\x96\xdd'
                  b'\xbe\xa2H<\xbf\xbd\xc7\x7f>\xa8\x06\x84?*\x19\x08\x05\x10\x01B\x01bJ\x10\xb2\xdf$>8\xe5\x15\xbf\x16'
                  b'\xad\xab\xbf\x04e\xb3\xbfZ\x14\n\x01x\x12\x0f\n\r\x08\x01\x12\t\n\x03\x12\x01N\n\x02\x08\x04b\t\n'
                  b'\x01y\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11')


@_examples()
@given(mutated())
@example(b"")
@example(b"\x08")  # an IR version field and nothing else
@example(NOT_UTF8_NAME)
@example(NOT_UTF8_DIM)
@example(TYPE_ZERO_CONSTANT)
@example(CYCLE)
@example(EMPTY_LIST_ATTRIBUTE)
def test_mutated_models_end_in_success_or_a_fusekit_error(data):
    outcome = pipeline(data)
    _count("mutated", outcome)
    assert outcome != "PassError"  # a FusekitError, but exit 70: a bug


@pytest.mark.parametrize("data", [NOT_UTF8_NAME, NOT_UTF8_DIM, TYPE_ZERO_CONSTANT, CYCLE, EMPTY_LIST_ATTRIBUTE,
                                  SHORT_RAW_DATA])
def test_crashes_found_by_fuzzing_are_input_errors(data):
    assert pipeline(data) == "InputError"


@pytest.mark.slow
@_examples(slow=True)
@given(mutated())
def test_mutated_models_long(data):
    outcome = pipeline(data)
    _count("mutated-long", outcome)
    assert outcome != "PassError"  # a FusekitError, but exit 70: a bug


# ---------------------------------------------------------------- nesting


def _nested_if(depth: int, both_branches: bool = False) -> onnx.ModelProto:
    """Ifs nested ``depth`` deep in their then branch (``both_branches``: in both, 2**depth bodies)."""
    from onnx import TensorProto, helper

    inner = helper.make_graph([helper.make_node("Identity", ["x"], ["y0"])], "b0", [],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [2])])
    leaf = inner
    for level in range(1, depth + 1):
        node = helper.make_node("If", ["c"], [f"y{level}"], then_branch=inner,
                                else_branch=inner if both_branches else leaf)
        inner = helper.make_graph([node], f"b{level}", [],
                                  [helper.make_tensor_value_info(f"y{level}", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(list(inner.node), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                                     helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              list(inner.output))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_subgraphs_nested_past_the_limit_are_refused_cleanly():
    from fusekit.model_io.limits import MAX_NESTING

    assert pipeline(_nested_if(MAX_NESTING).SerializeToString()) == "ok"
    with pytest.raises(FusekitError, match=f"nest deeper than {MAX_NESTING} levels"):
        api.run(_nested_if(MAX_NESTING + 1))


def test_exponentially_many_subgraphs_are_refused_in_a_second():
    """Found by this fuzz target's first run: 16 Ifs whose two branches are the one nested
    body are 65536 graphs to import (it hung for minutes). Refused by count, quickly."""
    from fusekit.model_io.limits import MAX_SUBGRAPHS

    start = time.perf_counter()
    with pytest.raises(FusekitError, match=f"more than {MAX_SUBGRAPHS} subgraphs"):
        api.run(_nested_if(16, both_branches=True))
    assert time.perf_counter() - start < 5


def _function_chain(depth: int, cycle: bool = False) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    functions = []
    for i in range(depth):
        callee = ("f0" if cycle else None) if i == depth - 1 else f"f{i + 1}"
        body = [helper.make_node(callee, ["a"], ["b"], domain="local")] if callee else \
            [helper.make_node("Relu", ["a"], ["b"])]
        functions.append(helper.make_function("local", f"f{i}", ["a"], ["b"], body,
                                              [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]))
    graph = helper.make_graph([helper.make_node("f0", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             ir_version=8, functions=functions)


def test_function_calls_past_the_limit_or_in_a_cycle_are_refused_cleanly():
    from fusekit.model_io.limits import MAX_NESTING

    assert pipeline(_function_chain(MAX_NESTING).SerializeToString()) == "ok"
    with pytest.raises(FusekitError, match="calls functions 17 deep"):
        api.run(_function_chain(MAX_NESTING + 1))
    with pytest.raises(FusekitError, match="function 'f0' calls itself"):
        api.run(_function_chain(3, cycle=True))


# ---------------------------------------------------------------- signals during save

SAVE_AND_SIGNAL = """
import os, signal, sys
from fusekit import outputs
from fusekit.cli import main

real = outputs._write_temp

def interrupted(path, write):
    def partial(f):
        f.write(b"partial")
        f.flush()
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        write(f)
    return real(path, partial)

outputs._write_temp = interrupted
sys.exit(main(["optimize", sys.argv[2], "-o", sys.argv[3]]))
"""


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", None)])
def test_signal_during_save_leaves_no_output(tmp_path, sig, code):
    import subprocess
    import sys

    model = tmp_path / "m.onnx"
    onnx.save(edge_models.unsorted_graph(), model)
    out = tmp_path / "out.onnx"
    run = subprocess.run([sys.executable, "-c", SAVE_AND_SIGNAL, sig, str(model), str(out)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0, run.stderr
    if code is not None:
        assert run.returncode == code, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
