"""Run a float model over sample inputs with onnxruntime, for fp16/bf16 conversion.

- :func:`load_samples` reads sample inputs: a ``.npz`` keyed by input name, or a ``.npy``
  for a model with one input. An array with one axis more than its input holds one sample
  per leading index; otherwise the array is one sample.
- :func:`observe_ranges` runs a graph with every float tensor as an output and keeps, per
  tensor, only its largest and smallest non-zero magnitude (memory: at most
  :data:`OUTPUTS_PER_RUN` tensors of one sample at a time, never the tensors of all samples).
- :func:`output_errors` compares a converted model's outputs with the original's:
  ``max|x - y|`` and ``max|x - y| / (1 + max|x|)`` per output, over the samples (or, without
  samples, generated inputs with every dynamic dim at 1 and at 2).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.errors import InputError
from fusekit.verify import _ORT_TYPES, make_inputs, session

Sample = dict[str, np.ndarray]
GENERATED_DIM_VALUES = (1, 2)
# Tensors fetched per run: onnxruntime frees an intermediate once read unless it is an
# output, so a run holds at most this many of them (the model runs once per chunk).
OUTPUTS_PER_RUN = 256


@dataclass
class Range:
    """The magnitudes a tensor took: the largest, and the smallest non-zero one."""

    max_abs: float = 0.0
    min_abs: float = math.inf

    def update(self, values: np.ndarray) -> None:
        if not values.size:
            return
        magnitude = np.abs(values.astype(np.float32, copy=False))
        self.max_abs = max(self.max_abs, float(magnitude.max()))  # inf (or nan) once any value is
        self.min_abs = min(self.min_abs, float(np.min(magnitude, where=magnitude > 0, initial=math.inf)))


def load_samples(path: str | os.PathLike, ranks: Mapping[str, int | None]) -> list[Sample]:
    """Samples for a model whose inputs have these ranks (None: unknown), from ``path``."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--data {path}: cannot read it as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if len(ranks) != 1:
            raise InputError(f"--data {path}: a .npy holds one input, the model has {len(ranks)} "
                             f"({', '.join(ranks)}); use a .npz keyed by input name")
        arrays = {next(iter(ranks)): loaded}
    else:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    unknown = sorted(set(arrays) - set(ranks))
    missing = sorted(set(ranks) - set(arrays))
    if unknown or missing:
        raise InputError(f"--data {path}: " + "; ".join(
            ([f"no model input named {', '.join(unknown)}"] if unknown else [])
            + ([f"no array for input {', '.join(missing)}"] if missing else []))
            + f" (inputs: {', '.join(ranks)})")
    split = {name: _split(a, ranks[name]) for name, a in arrays.items()}
    counts = {len(v) for v in split.values()}
    if len(counts) != 1:
        raise InputError(f"--data {path}: inputs hold different numbers of samples: "
                         + ", ".join(f"{n}: {len(v)}" for n, v in split.items()))
    return [{name: values[i] for name, values in split.items()} for i in range(counts.pop())]


def _split(array: np.ndarray, rank: int | None) -> list[np.ndarray]:
    if rank is not None and array.ndim == rank + 1:
        return list(array)
    return [array]


def input_ranks(model: onnx.ModelProto | str | os.PathLike) -> dict[str, int | None]:
    """Input name -> rank (None when unknown) of an ONNX model, as onnxruntime sees it."""
    return {i.name: (len(i.shape) if isinstance(i.shape, list) else None) for i in session(model).get_inputs()}


def observe_ranges(graph: gs.Graph, names: Iterable[str], samples: list[Sample]) -> dict[str, Range]:
    """Run ``graph`` over ``samples`` with the tensors ``names`` as extra outputs; their ranges."""
    names = list(dict.fromkeys(names))
    with tempfile.TemporaryDirectory(prefix="fusekit-ranges-") as tmp:
        path = _with_outputs(graph, names, Path(tmp))
        sess = session(path, arena=False)
        wanted = [o.name for o in sess.get_outputs() if o.name in set(names)]
        ranges = {name: Range() for name in wanted}
        for sample in samples:
            feeds = _feeds(sess, sample)
            for start in range(0, len(wanted), OUTPUTS_PER_RUN):
                chunk = wanted[start:start + OUTPUTS_PER_RUN]
                for name, values in zip(chunk, sess.run(chunk, feeds)):
                    ranges[name].update(np.asarray(values))
        return ranges


def _with_outputs(graph: gs.Graph, names: list[str], folder: Path) -> Path:
    """Write ``graph`` (weights streamed, stored beside it) with ``names`` added as outputs."""
    from fusekit.model_io import save_graph

    path = folder / "model.onnx"
    save_graph(graph, onnx.ModelProto(), path, external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in present)
    path.write_bytes(model.SerializeToString())
    return path


def _feeds(sess, sample: Sample) -> Sample:
    """``sample`` in the types the session's inputs declare."""
    return {i.name: np.asarray(sample[i.name]).astype(_ORT_TYPES.get(i.type, np.float32), copy=False)
            for i in sess.get_inputs()}


def output_errors(reference: onnx.ModelProto | str | os.PathLike, converted: onnx.ModelProto | str | os.PathLike,
                  samples: list[Sample] | None = None) -> dict[str, dict[str, float]]:
    """Per output of ``reference``: the largest absolute and relative error of ``converted``.
    One model is loaded at a time (the reference's outputs are kept, not its session)."""
    ref = session(reference, arena=False)
    names = [o.name for o in ref.get_outputs()]
    if samples:
        feeds = [_feeds(ref, s) for s in samples]
    else:
        feeds = [make_inputs(ref, value) for value in GENERATED_DIM_VALUES]
    expected = [ref.run(names, feed) for feed in feeds]
    del ref
    new = session(converted, arena=False)
    worst = {name: {"max_abs_error": 0.0, "relative_error": 0.0} for name in names}
    for feed, wanted in zip(feeds, expected):
        got = new.run(names, _feeds(new, feed))
        for name, e, g in zip(names, wanted, got):
            absolute, relative = _error(np.asarray(e), np.asarray(g))
            worst[name]["max_abs_error"] = max(worst[name]["max_abs_error"], absolute)
            worst[name]["relative_error"] = max(worst[name]["relative_error"], relative)
    return worst


def _error(expected: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """``max|x - y|`` and ``max|x - y| / (1 + max|x|)`` (inf when shapes differ)."""
    if expected.shape != got.shape:
        return math.inf, math.inf
    if not expected.size:
        return 0.0, 0.0
    e, g = expected.astype(np.float64), got.astype(np.float64)
    same = (e == g) | (np.isnan(e) & np.isnan(g))
    diff = np.where(same, 0.0, np.abs(e - g))
    worst = float(np.nan_to_num(diff, nan=math.inf).max())
    return worst, worst / (1.0 + float(np.nan_to_num(np.abs(e), nan=0.0).max()))
