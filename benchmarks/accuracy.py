"""Output differences against the original model, under onnxruntime, at two batch sizes.

    python benchmarks/accuracy.py reference ORIGINAL.onnx DIR 1,3 RESULT.json
    python benchmarks/accuracy.py check OPTIMIZED.onnx DIR RESULT.json

``reference`` makes inputs for each batch size (dynamic first axis; other dynamic axes at
``LENGTH``; fixed-batch models run once, at their own batch) and saves them with the
original's outputs in DIR. ``check`` runs another model on the same inputs and reports,
per batch size, the largest absolute difference over all outputs. Both run onnxruntime
with graph optimizations off, so the model is measured as written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from child import job_main

LENGTH = 32  # sequence length (any dynamic axis but the first)
_TOKEN_HIGH = 100  # token ids are drawn below this, valid for any vocabulary in the set


def input_specs(model: onnx.ModelProto) -> list[tuple[str, int, list[int | str]]]:
    """(name, ONNX element type, dims as int or symbolic name) of the inputs to feed."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:  # IR < 4: weights listed as inputs
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        specs.append((vi.name, t.elem_type, dims))
    return specs


def has_dynamic_batch(specs) -> bool:
    return any(dims and isinstance(dims[0], str) for _, _, dims in specs)


def make_inputs(specs, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, elem_type, dims in specs:
        shape = [d if isinstance(d, int) else (batch if axis == 0 else LENGTH) for axis, d in enumerate(dims)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.random(shape) < 0.5
        elif "mask" in name.lower():
            mask = np.ones(shape, dtype=dtype)
            if mask.ndim == 2:  # row i pads its last i/8 of the sequence
                for i in range(1, shape[0]):
                    mask[i, shape[1] - shape[1] * i // 8:] = 0
            feeds[name] = mask
        else:
            feeds[name] = rng.integers(0, _TOKEN_HIGH, shape).astype(dtype)
    return feeds


def _fixed_batch(specs) -> int:
    return next((dims[0] for _, _, dims in specs if dims and isinstance(dims[0], int)), 1)


def session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def reference(path: str, folder: str, batches: str) -> dict:
    model = onnx.load(path, load_external_data=False)
    specs = input_specs(model)
    sizes = [int(b) for b in batches.split(",")] if has_dynamic_batch(specs) else [None]
    del model
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    runs = {}
    for i, batch in enumerate(sizes):
        feeds = make_inputs(specs, batch or 1, seed=i)
        key = str(batch if batch is not None else _fixed_batch(specs))
        outputs = dict(zip(names, sess.run(names, feeds)))
        np.savez(Path(folder) / f"inputs_{key}.npz", **feeds)
        np.savez(Path(folder) / f"outputs_{key}.npz", **outputs)
        runs[key] = {"inputs": {k: list(v.shape) for k, v in feeds.items()},
                     "outputs": {k: list(np.shape(v)) for k, v in outputs.items()}}
    return {"batches": list(runs), "fixed_batch": sizes == [None], "runs": runs}


def check(path: str, folder: str) -> dict:
    sess = session(path)
    wanted = {i.name for i in sess.get_inputs()}
    diffs, scales = {}, {}
    for inputs_file in sorted(Path(folder).glob("inputs_*.npz")):
        key = inputs_file.stem.split("_", 1)[1]
        with np.load(inputs_file) as f:
            feeds = {k: f[k] for k in f.files if k in wanted}
        missing = wanted - set(feeds)
        if missing:
            names = sorted(missing)
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise ValueError(f"the model requires inputs the original did not: {', '.join(names[:3])}{more}")
        with np.load(Path(folder) / f"outputs_{key}.npz") as f:
            expected = {k: f[k] for k in f.files}
        names = list(expected)
        got = dict(zip(names, sess.run(names, feeds)))
        diffs[key] = max(_max_abs_diff(expected[n], got[n], n) for n in names)
        scales[key] = max((float(np.abs(expected[n]).max(initial=0)) for n in names
                           if expected[n].dtype.kind in "fiub"), default=0.0)
    return {"max_abs_diff": diffs, "output_scale": scales}


def _max_abs_diff(expected: np.ndarray, got: np.ndarray, name: str) -> float:
    if expected.shape != got.shape:
        raise ValueError(f"output {name}: shape {list(got.shape)}, expected {list(expected.shape)}")
    if expected.dtype.kind not in "fiub":
        return 0.0 if np.array_equal(expected, got) else float("inf")
    a, b = expected.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def work(args: list[str]) -> dict:
    command, *rest = args
    if command == "reference":
        return reference(*rest)
    if command == "check":
        return check(*rest)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    job_main(work)
