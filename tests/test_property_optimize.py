"""Property: on any valid graph, ``fusekit.api.optimize`` keeps every output and never adds nodes.

Graphs come from ``tests.strategies.onnx_models``; each is checked with ``onnx.checker``
first, then the optimized model is compared with the original under onnxruntime at
N = 1 and N = 3. ``optimize_with`` also checks the result with ``onnx.checker`` (full
check), that the caller's proto is untouched, and that graph input/output names are
unchanged. Example counts come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st

from tests.helpers import assert_same_outputs, feeds_for, optimize_with
from tests.strategies import onnx_models

CLEANUP = ["fold-constants", "eliminate-dead-code", "remove-noops", "dedupe-initializers",
           "eliminate-common-subexpressions", "infer-shapes", "merge-slices", "flatten-concats"]


@given(onnx_models())
def test_optimize_preserves_outputs_and_never_adds_nodes(model):
    onnx.checker.check_model(model, full_check=True)
    note(onnx.printer.to_text(model.graph))
    optimized, report = optimize_with(model)
    note(onnx.printer.to_text(optimized.graph))
    assert report.converged
    assert len(optimized.graph.node) <= len(model.graph.node)
    assert_same_outputs(model, optimized, feeds_for(model, (1, 3)))
    # The result is a fixed point: optimizing it again changes nothing.
    again, report = optimize_with(optimized)
    assert report.iterations == 1 and len(again.graph.node) == len(optimized.graph.node)


@settings(max_examples=max(settings().max_examples // 2, 1))
@given(onnx_models(), st.lists(st.sampled_from(CLEANUP), min_size=1, max_size=3, unique=True),
       st.sampled_from([8, 32, 1 << 20]))
def test_every_pass_is_exact_on_its_own(model, passes, fold_max_bytes):
    """Each pass (or small set) alone, with the graph checked after every pass (debug), and
    folding capped low so that constant regions are cut in many places."""
    onnx.checker.check_model(model, full_check=True)
    note(onnx.printer.to_text(model.graph))
    options = {"fold_max_bytes": fold_max_bytes} if "fold-constants" in passes else {}
    optimized, report = optimize_with(model, passes, debug=True, options=options)
    note(onnx.printer.to_text(optimized.graph))
    assert report.converged
    assert len(optimized.graph.node) <= len(model.graph.node)
    assert_same_outputs(model, optimized, feeds_for(model, (1, 3)))
