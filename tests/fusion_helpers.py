"""Shared by the fusion-pass tests (fuse-layer-norm, fuse-gelu, fuse-activations).

- :class:`Builder`: a graph written op by op (constants drawn as initializers or
  ``Constant`` nodes), input ``x`` of shape ``[N, ...]`` with a dynamic batch N.
- :func:`check_fused`: optimize with given passes, check the result and compare outputs
  under onnxruntime at N = 1 and 3 with the dtype's tolerance; returns the largest
  difference, so the tests can record it.
- :func:`zoo_run`: a real architecture (tests/zoo_models.py) through the default pipeline,
  once per process, with the inputs its tests compare on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fusekit.verify import Tolerance, output_diff
from tests.helpers import feeds_for, optimize_with, run_ort
from tests.zoo_models import zoo_model

ONNX_TYPE = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16}
# float32: 1e-5, relative to the value for large values. float16: the decomposed graph rounds
# every intermediate to float16 (ulp 2^-10 relative), the fused op does not.
TOLERANCE = {np.dtype(np.float32): Tolerance(rtol=1e-5, atol=1e-5),
             np.dtype(np.float16): Tolerance(rtol=4e-3, atol=4e-3)}
MAX_DIFF: dict[str, float] = {}  # largest difference seen per test group (see print_max_diffs)


@dataclass
class Builder:
    """A graph under construction. ``as_node(i)`` decides whether constant i is a node."""

    dtype: np.dtype
    dims: Sequence[int]  # the static dims of x after the batch dim
    opset: int = 17
    as_node: Any = lambda i: False
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.dtype = np.dtype(self.dtype)
        self.inputs.append(helper.make_tensor_value_info("x", ONNX_TYPE[self.dtype], ["N", *self.dims]))

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, dtype=None, prefix: str = "c") -> str:
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(prefix)
        if self.as_node(self.count):
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_"),
                                               value=numpy_helper.from_array(array, name)))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def input(self, shape: Sequence, prefix: str = "in") -> str:
        name = self.fresh(prefix)
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_TYPE[self.dtype], list(shape)))
        return name

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs) -> str:
        out = self.fresh(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name or self.fresh(op + "_"), **attrs))
        return out

    def output(self, name: str) -> None:
        """A graph output of x's rank (dims left symbolic: inference fills them in)."""
        shape = [f"{name}_d{i}" for i in range(len(self.dims) + 1)]
        self.outputs.append(helper.make_tensor_value_info(name, ONNX_TYPE[self.dtype], shape))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.inits)
        ir = 7 if self.opset < 17 else 8 if self.opset < 19 else 9
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=ir)
        onnx.checker.check_model(model, full_check=True)
        return model


def max_diff(original: onnx.ModelProto, optimized: onnx.ModelProto, feeds_list, tolerance: Tolerance) -> float:
    """The largest output difference; asserts it is within ``tolerance`` (and names and types agree)."""
    worst = 0.0
    for feeds in feeds_list:
        expected, got = run_ort(original, feeds), run_ort(optimized, feeds)
        assert list(got) == list(expected)
        for name, value in expected.items():
            e, g = np.asarray(value), np.asarray(got[name])
            assert (e.shape, e.dtype) == (g.shape, g.dtype), f"{name}: {e.dtype}{e.shape} -> {g.dtype}{g.shape}"
            diff = output_diff(name, e, g, tolerance)
            assert diff.ok, f"output {name!r} differs by {diff.max_abs_diff:.3g} ({tolerance})"
            worst = max(worst, diff.max_abs_diff)
    return worst


def check_fused(model: onnx.ModelProto, passes: Sequence[str], dtype, group: str, **kwargs):
    """Optimize (checker, names, caller's proto untouched: ``optimize_with``), compare at N = 1, 3."""
    optimized, report = optimize_with(model, passes, **kwargs)
    tolerance = TOLERANCE[np.dtype(dtype)]
    worst = max_diff(model, optimized, feeds_for(model, (1, 3)), tolerance)
    key = f"{group}, {np.dtype(dtype).name}"
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), worst)
    return optimized, report


def rewrites(report, pass_name: str) -> int:
    return sum(s.rewrites for s in report.passes if s.name == pass_name)


# ---------------------------------------------------------------- real models

def zoo_feeds(name: str) -> list[dict[str, np.ndarray]]:
    """Batch 1 and 3 (the encoder: sequence 8 and 16, every pairing)."""
    rng = np.random.default_rng(0)
    if name.startswith("encoder"):
        feeds = []
        for batch in (1, 3):
            for seq in (8, 16):
                mask = np.ones((batch, seq), np.int64)
                mask[:, seq // 2 + 1:] = rng.integers(0, 2, (batch, seq - seq // 2 - 1))
                feeds.append({"input_ids": rng.integers(0, 1000, (batch, seq)).astype(np.int64),
                              "attention_mask": mask})
        return feeds
    return [{"images": rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)} for batch in (1, 3)]


@functools.cache
def zoo_run(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto, Any, float]:
    """(raw export, default-pipeline result, report, largest output difference on zoo_feeds)."""
    original = onnx.load(str(zoo_model(name)))
    optimized, report = optimize_with(original)
    worst = max_diff(original, optimized, zoo_feeds(name), Tolerance(rtol=1e-4, atol=1e-5))
    return original, optimized, report, worst


def zoo_modules(name: str, cls_name: str) -> int:
    """How many modules of class ``cls_name`` (e.g. "LayerNorm") the torch model has."""
    zoo_model(name)  # puts examples/ on sys.path
    import zoo

    factory = {**zoo.IMAGE_MODELS, **zoo.ENCODER_MODELS}[name]
    return sum(type(m).__name__ == cls_name for m in factory().modules())


@pytest.fixture(scope="module", autouse=False)
def print_max_diffs():
    """Module fixture: print the largest differences measured (visible with ``pytest -s``)."""
    yield
    for group, worst in sorted(MAX_DIFF.items()):
        print(f"\nmax |difference| {group}: {worst:.3g}")
