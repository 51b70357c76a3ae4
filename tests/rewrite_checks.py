"""Shared checks for the rewrite-pass tests: run one pass, prove the result, read its verdicts.

``check_pass`` optimizes a model with one pass (plus infer-shapes, which the passes need),
checks the result with ``onnx.checker`` (full check, through ``optimize_with``), runs both
models under onnxruntime (graph optimizations off) at batch 1 and 3 when a dim is dynamic,
requires every float output to match within 1e-5 absolute, asserts the op counts the
caller expects, and returns the largest difference seen. ``verdicts`` gives what the
pass's ``inspect`` says of every node, by name.

Set ``FUSEKIT_PRINT_DIFFS=1`` to print, at exit, the largest difference seen per pass.
"""

from __future__ import annotations

import atexit
import os
from collections import Counter
from typing import Mapping

import numpy as np
import onnx

from tests.helpers import feeds_for, inspect_pass, op_counts, optimize_with, run_ort

ATOL = 1e-5
MAX_DIFFS: dict[str, float] = {}
CHECKED: Counter = Counter()


def max_abs_diff(original: onnx.ModelProto, optimized: onnx.ModelProto, dim_values=(1, 3)) -> float:
    """Largest |difference| over every output and input size; asserts names, shapes, dtypes
    and NaN positions agree and every float difference is within ``ATOL``."""
    worst = 0.0
    for feeds in feeds_for(original, dim_values):
        expected, got = run_ort(original, feeds), run_ort(optimized, feeds)
        assert list(got) == list(expected), f"output names changed: {list(expected)} -> {list(got)}"
        for name, e in expected.items():
            e, g = np.asarray(e), np.asarray(got[name])
            assert (e.shape, e.dtype) == (g.shape, g.dtype), f"{name}: {e.dtype}{e.shape} became {g.dtype}{g.shape}"
            if e.dtype.kind not in "fc":
                assert np.array_equal(e, g), f"{name}: values differ"
                continue
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            assert np.array_equal(np.isnan(e64), np.isnan(g64)), f"{name}: NaN positions differ"
            same_inf = np.isinf(e64) & (e64 == g64)
            with np.errstate(invalid="ignore"):
                diff = np.where(np.isnan(e64) | same_inf, 0.0, np.abs(e64 - g64))
            d = float(diff.max()) if diff.size else 0.0
            assert d <= ATOL, f"{name} on inputs {({k: v.shape for k, v in feeds.items()})} differs by {d:.3g}"
            worst = max(worst, d)
    return worst


def check_pass(model: onnx.ModelProto, pass_name: str, *, expect: Mapping[str, int] | None = None,
               unchanged: bool = False) -> onnx.ModelProto:
    """Run ``pass_name`` (with infer-shapes), prove the result and check op counts.

    ``expect`` maps op types to their count after the pass; ``unchanged`` asserts the
    node multiset is exactly the original one (a near miss).
    """
    optimized, report = optimize_with(model, [pass_name, "infer-shapes"])
    before, after = op_counts(model), op_counts(optimized)
    if unchanged:
        assert after == before, f"near miss rewritten: {dict(before)} -> {dict(after)}\n" \
                                f"{onnx.printer.to_text(optimized.graph)}"
    for op, count in (expect or {}).items():
        assert after[op] == count, f"{op}: expected {count}, got {after[op]} ({dict(before)} -> {dict(after)})\n" \
                                   f"{onnx.printer.to_text(optimized.graph)}"
    assert len(optimized.graph.node) <= len(model.graph.node), "the pass added nodes"
    diff = max_abs_diff(model, optimized)
    MAX_DIFFS[pass_name] = max(MAX_DIFFS.get(pass_name, 0.0), diff)
    CHECKED[pass_name, "unchanged" if unchanged else "rewritten"] += 1
    again, report = optimize_with(optimized, [pass_name, "infer-shapes"])
    assert op_counts(again) == after, "the pass is not at a fixed point after one run"
    return optimized


def dims(shape) -> str:
    """``[N, 3, 4]`` as ONNX text dims: ``N,3,4``."""
    return ",".join(str(d) for d in shape)


def header(opset: int) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>\n'


def verdicts(model: onnx.ModelProto, pass_name: str) -> dict[str, tuple[bool, str]]:
    """What ``inspect`` says of each node: {node name: (applies, message)}."""
    found = inspect_pass(model, pass_name)
    out = {}
    for node, findings in found.items():
        assert len(findings) == 1, findings
        out[node] = (findings[0].applies, findings[0].message)
        assert findings[0].message, f"{node}: empty message"
    return out


def _print_diffs() -> None:
    if MAX_DIFFS:
        print("\nlargest output difference per pass (examples checked):")
        for name in sorted(MAX_DIFFS):
            print(f"  {name}: {MAX_DIFFS[name]:.3g}  (rewritten {CHECKED[name, 'rewritten']}, "
                  f"near misses {CHECKED[name, 'unchanged']})")


if os.environ.get("FUSEKIT_PRINT_DIFFS"):
    atexit.register(_print_diffs)
