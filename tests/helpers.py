"""Shared helpers for the pass tests: build models from ONNX text, run them, compare.

Models run under onnxruntime with its own graph optimizations off (``fusekit.verify``),
so a comparison is between the two graphs as written. Inputs come from
``fusekit.verify.make_inputs``: every dynamic dim gets one value per run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.parser

from fusekit import registry
from fusekit.api import optimize
from fusekit.model_io import load_model
from fusekit.pass_infra import Finding, PassContext
from fusekit.report import OptimizeReport
from fusekit.shapes import annotate_shapes
from fusekit.verify import Tolerance, make_inputs, output_diff, session

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
DIM_VALUES = (1, 3)


def parse(text: str, header: str = HEADER) -> onnx.ModelProto:
    """A model from ONNX text (``header`` prepended unless the text has its own), checked."""
    model = onnx.parser.parse_model(text if text.lstrip().startswith("<") else header + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` on ``feeds``, by name (onnxruntime, optimizations off)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def feeds_for(model: onnx.ModelProto, dim_values: Sequence[int] = DIM_VALUES, seed: int = 0
              ) -> list[dict[str, np.ndarray]]:
    """One set of random inputs per dynamic-dim value (one set if every dim is static)."""
    sess = session(model)
    dynamic = any(not (isinstance(d, int) and d > 0) for i in sess.get_inputs() for d in i.shape)
    return [make_inputs(sess, v, seed) for v in (dim_values if dynamic else dim_values[:1])]


def assert_same_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto,
                        feeds_list: Iterable[Mapping[str, np.ndarray]] | None = None,
                        rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Both models give the same outputs (same names, shapes, dtypes, NaN positions)."""
    feeds_list = feeds_for(original) if feeds_list is None else list(feeds_list)
    assert feeds_list, "no inputs to compare on"
    tolerance = Tolerance(rtol, atol)
    for feeds in feeds_list:
        expected, got = run_ort(original, feeds), run_ort(optimized, feeds)
        assert list(got) == list(expected), f"output names changed: {list(expected)} -> {list(got)}"
        shapes = {k: v.shape for k, v in feeds.items()}
        for name, value in expected.items():
            e, g = np.asarray(value), np.asarray(got[name])
            assert (e.shape, e.dtype) == (g.shape, g.dtype), \
                f"output {name!r} on inputs {shapes}: {e.dtype}{list(e.shape)} became {g.dtype}{list(g.shape)}"
            diff = output_diff(name, e, g, tolerance)
            assert diff.ok, f"output {name!r} on inputs {shapes} differs by {diff.max_abs_diff:.3g}"


def optimize_with(model: onnx.ModelProto, passes: Sequence[str] | None = None, **kwargs: Any
                  ) -> tuple[onnx.ModelProto, OptimizeReport]:
    """``fusekit.api.optimize(model, passes=..., return_report=True)``, checked on the way.

    Asserts that the input proto is left unchanged, that the result passes
    ``onnx.checker`` (full check) and that graph inputs and outputs keep their names.
    """
    before = model.SerializeToString()
    optimized, report = optimize(model, passes=passes, return_report=True, **kwargs)
    assert model.SerializeToString() == before, "optimize modified the caller's ModelProto"
    onnx.checker.check_model(optimized, full_check=True)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    initializers = {t.name for t in model.graph.initializer}
    assert [i.name for i in optimized.graph.input] == \
        [i.name for i in model.graph.input if i.name not in initializers]
    return optimized, report


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def check_exact(model: onnx.ModelProto, passes: Sequence[str] | None = None, *,
                removed: Iterable[str] = (), **kwargs: Any) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Optimize, then assert every op type in ``removed`` is gone and outputs are unchanged."""
    optimized, report = optimize_with(model, passes, **kwargs)
    counts = op_counts(optimized)
    for op in removed:
        assert op_counts(model)[op] > 0, f"test model has no {op} to remove"
        assert counts[op] == 0, f"{counts[op]} {op} left in\n{onnx.printer.to_text(optimized.graph)}"
    assert len(optimized.graph.node) <= len(model.graph.node)
    assert_same_outputs(model, optimized)
    return optimized, report


def check_unchanged(model: onnx.ModelProto, passes: Sequence[str] | None = None, *,
                    kept: Iterable[str], **kwargs: Any) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Optimize, then assert each op type in ``kept`` is still there as often as before."""
    optimized, report = optimize_with(model, passes, **kwargs)
    before, after = op_counts(model), op_counts(optimized)
    for op in kept:
        assert before[op] > 0, f"test model has no {op}"
        assert after[op] == before[op], \
            f"{op}: {before[op]} -> {after[op]}\n{onnx.printer.to_text(optimized.graph)}"
    assert_same_outputs(model, optimized)
    return optimized, report


def inspect_pass(model: onnx.ModelProto, pass_name: str, *, infer_shapes: bool = True,
                 options: Mapping[str, Any] | None = None) -> dict[str, list[Finding]]:
    """What ``pass_name`` would do to each node of ``model`` (findings by node name).

    The graph is the one ``optimize`` would see, with shapes inferred first unless told
    not to; the pass runs ``inspect`` only, and the graph is checked to be unchanged.
    """
    graph = load_model(model).graph
    if infer_shapes:
        annotate_shapes(graph)
    before = _structure(graph)
    instance = registry.discover().passes[pass_name].cls()
    by_node: dict[str, list[Finding]] = {}
    for f in instance.inspect(graph, PassContext(options=dict(options or {}))):
        assert f.pass_name == pass_name
        by_node.setdefault(f.node, []).append(f)
    assert _structure(graph) == before, f"{pass_name}.inspect changed the graph"
    return by_node


def _structure(graph) -> list:
    return [(n.name, n.op, [t.name for t in n.inputs], [t.name for t in n.outputs]) for n in graph.nodes]


def removed_by(report: OptimizeReport, node: str) -> list[str]:
    """Names of the passes that the report says removed or replaced ``node``."""
    return [e.pass_name for e in report.events if e.node == node]
