"""Prove an optimized model computes what the original did, with onnxruntime.

Inputs are generated from the original model's input types: normal floats, small
non-negative integers (safe as indices), random booleans. Each dynamic dim is tried at
two values (dims sharing a name get the same value). Both models run with onnxruntime's
own graph optimizations off, so the comparison is between the two graphs as written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from fusekit.model_io import PROTOBUF_LIMIT, save_model
from fusekit.validate import first_line

DEFAULT_DIM_VALUES = (1, 3)
INDEX_RANGE = 4  # ints in [0, 4): valid as indices into any non-trivial axis


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass
class OutputDiff:
    name: str
    max_abs_diff: float
    ok: bool


@dataclass
class VerifyResult:
    """Per dynamic-dim value, each output's largest difference; ``ok`` if all within tolerance."""

    runs: dict[int, list[OutputDiff]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    dynamic: bool = True  # whether the inputs had dynamic dims (else one run at their static shapes)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(d.ok for diffs in self.runs.values() for d in diffs)

    @property
    def max_abs_diff(self) -> float:
        return max((d.max_abs_diff for diffs in self.runs.values() for d in diffs), default=0.0)

    def failures(self) -> list[str]:
        return [f"output {d.name!r} differs by {d.max_abs_diff:.3g} ({self.where(value)})"
                for value, diffs in self.runs.items() for d in diffs if not d.ok]

    def where(self, value: int | None = None) -> str:
        """Which inputs were run: the dynamic dims' values, or the inputs' static shapes."""
        if not self.dynamic:
            return "inputs at their static shapes"
        values = [value] if value is not None else list(self.runs)
        return f"dynamic dims = {', '.join(map(str, values))}"

    def to_dict(self) -> dict:
        return {"ok": self.ok, "max_abs_diff": self.max_abs_diff, "dynamic": self.dynamic,
                "runs": {str(v): {d.name: d.max_abs_diff for d in diffs} for v, diffs in self.runs.items()},
                "skipped": {str(v): why for v, why in self.skipped.items()}}


def session(model: onnx.ModelProto | str | os.PathLike, *, arena: bool = True):
    """An onnxruntime CPU session with graph optimizations off; large protos go via a file.
    ``arena=False``: memory is returned after each run instead of kept for the next."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    external = any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if not external and model.ByteSize() < PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    # onnxruntime reads external data only relative to a model file: write one.
    with tempfile.TemporaryDirectory(prefix="fusekit-verify-") as tmp:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        path = Path(tmp, "model.onnx")
        save_model(copy, path, external_data=True)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def make_inputs(sess, dim_value: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for an onnxruntime session; every dynamic dim gets ``dim_value``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.type not in _ORT_TYPES:
            raise ValueError(f"input {inp.name!r} has type {inp.type}, which verification cannot generate")
        shape = [d if isinstance(d, int) and d > 0 else dim_value for d in inp.shape]
        feeds[inp.name] = random_array(np.dtype(_ORT_TYPES[inp.type]), shape, rng)
    return feeds


def random_array(dtype: np.dtype, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, INDEX_RANGE, shape).astype(dtype)
    if dtype == np.object_:
        return np.array(rng.choice(["a", "b"], shape), dtype=object)
    return rng.standard_normal(shape).astype(dtype)


def has_dynamic_dims(sess) -> bool:
    return any(not (isinstance(d, int) and d > 0) for inp in sess.get_inputs() for d in inp.shape)


def compare(original: onnx.ModelProto | str | os.PathLike, optimized: onnx.ModelProto | str | os.PathLike,
            tolerance: Tolerance = Tolerance(),
            dim_values: tuple[int, ...] = DEFAULT_DIM_VALUES) -> VerifyResult:
    """Run both models on the same generated inputs and compare every output."""
    result = VerifyResult()
    ref, new = session(original), session(optimized)
    names = [o.name for o in ref.get_outputs()]
    result.dynamic = has_dynamic_dims(new)
    values = dim_values if result.dynamic else dim_values[:1]
    for value in values:
        feeds = make_inputs(new, value)
        try:
            expected = ref.run(names, feeds)
        except Exception as exc:  # the original itself cannot run at this size
            result.skipped[value] = f"original model fails at this size: {first_line(exc)}"
            continue
        got = new.run(names, feeds)
        result.runs[value] = [output_diff(n, e, g, tolerance) for n, e, g in zip(names, expected, got)]
    return result


def output_diff(name: str, expected, got, tolerance: Tolerance) -> OutputDiff:
    e, g = np.asarray(expected), np.asarray(got)
    if e.shape != g.shape or e.dtype != g.dtype:
        return OutputDiff(name, float("inf"), False)
    if e.dtype.kind in "OUS":
        same = bool(np.array_equal(e, g))
        return OutputDiff(name, 0.0 if same else float("inf"), same)
    if e.dtype.kind in "biu":  # indices, counts, masks: exact (a tolerance would pass argmax 10000 vs 10001)
        diff = np.abs(e.astype(np.float64) - g.astype(np.float64))
        max_diff = float(diff.max()) if diff.size else 0.0
        return OutputDiff(name, max_diff, bool(np.array_equal(e, g)))
    e64, g64 = e.astype(np.float64), g.astype(np.float64)
    nan_same = np.array_equal(np.isnan(e64), np.isnan(g64))
    finite = ~np.isnan(e64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(np.where(finite, e64 - g64, 0.0))
        diff = np.where(np.isinf(e64) & (e64 == g64), 0.0, diff)
    max_diff = float(diff.max()) if diff.size else 0.0
    ok = nan_same and bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(np.where(finite, e64, 0.0))))
    return OutputDiff(name, max_diff, ok)
