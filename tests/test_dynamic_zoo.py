"""Dynamic shapes on real torch exports (tests/zoo_models.py), checked with onnxruntime.

- nothing fixed: every dim param stays (inputs, outputs), the shape arithmetic that
  does not depend on them folds, and outputs match the raw export at several sizes;
- every input fixed (``input_shapes`` / ``--dim``): no Shape node is left and every
  value_info is static;
- profile ranges recorded by optimize: outputs match at min, opt and max, and the
  TensorRT builder (tensorrt_rtx, CPU-only) builds from the stored profile alone.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import onnx
import pytest

import fusekit.api as fk
from fusekit.cli import main
from tests.helpers import assert_same_outputs
from tests.zoo_models import zoo_model


@functools.cache
def raw(name: str) -> onnx.ModelProto:
    return onnx.load(zoo_model(name))


@functools.cache
def optimized(name: str, fixed: tuple = (), dynamic: tuple = ()) -> onnx.ModelProto:
    model, report = fk.optimize(raw(name), dims=dict(fixed), dynamic=list(dynamic), return_report=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def shape_nodes(model: onnx.ModelProto) -> int:
    return Counter(n.op_type for n in model.graph.node)["Shape"]


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def io_dims(model: onnx.ModelProto) -> dict[str, list]:
    return {vi.name: dims(vi) for vi in [*model.graph.input, *model.graph.output]}


def images(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"images": np.random.default_rng(seed).standard_normal((batch, 3, 64, 64)).astype(np.float32)}


def tokens(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[:, seq // 2 + 1:] = rng.integers(0, 2, (batch, seq - seq // 2 - 1))  # padding at the end
    return {"input_ids": rng.integers(0, 1000, (batch, seq)), "attention_mask": mask}


def test_resnet_keeps_its_dynamic_batch():
    model = optimized("resnet-tiny")
    assert io_dims(model) == {"images": ["batch", 3, 64, 64], "logits": ["batch", 10]}
    assert all(dims(vi)[0] == "batch" for vi in model.graph.value_info)
    assert_same_outputs(raw("resnet-tiny"), model, [images(1), images(3, 1), images(5, 2)])


def test_resnet_with_its_input_fixed_is_static():
    model, _ = fk.optimize(raw("resnet-tiny"), input_shapes={"images": [2, 3, 64, 64]}, return_report=True)
    assert io_dims(model) == {"images": [2, 3, 64, 64], "logits": [2, 10]}
    assert model.graph.value_info and all(all(isinstance(d, int) and d > 0 for d in dims(vi))
                                          for vi in model.graph.value_info)
    assert_same_outputs(raw("resnet-tiny"), model, [images(2)])


def test_encoder_folds_its_shape_chains_and_keeps_batch_and_seq():
    before, model = raw("encoder-tiny"), optimized("encoder-tiny")
    assert shape_nodes(before) >= 20
    assert shape_nodes(model) <= 1  # Shape(input_ids), read by the position Range and the token-type zeros
    assert io_dims(model) == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"],
                              "hidden": ["batch", "seq", 64], "pooled": ["batch", 64]}
    assert all(op.input[1] in {t.name for t in model.graph.initializer}
               for op in model.graph.node if op.op_type == "Reshape")  # every Reshape target is constant
    names = {d for vi in model.graph.value_info for d in dims(vi) if isinstance(d, str)}
    assert names <= {"batch", "seq"}, names  # one name per dim, none made up
    assert_same_outputs(before, model, [tokens(1, 8), tokens(3, 16, 1), tokens(2, 5, 2)], atol=1e-4)


def test_encoder_with_every_dim_fixed_has_no_shape_node(tmp_path, capsys):
    path = tmp_path / "encoder.onnx"
    out = tmp_path / "encoder.fixed.onnx"
    onnx.save(raw("encoder-tiny"), path)
    assert main(["optimize", str(path), "-o", str(out), "--dim", "batch=2", "--dim", "seq=16"]) == 0
    capsys.readouterr()
    model = onnx.load(out)
    assert shape_nodes(model) == 0
    assert io_dims(model)["hidden"] == [2, 16, 64]
    assert model.graph.value_info and all(all(isinstance(d, int) and d > 0 for d in dims(vi))
                                          for vi in model.graph.value_info)
    assert_same_outputs(raw("encoder-tiny"), model, [tokens(2, 16)], atol=1e-4)


RANGES = ("batch=1:4:8", "seq=1:16:128")


def test_profile_ranges_are_recorded_and_hold_at_every_end():
    model = optimized("encoder-tiny", dynamic=RANGES)
    stored = {p.key: p.value for p in model.metadata_props}
    assert '"dim": "batch"' in stored["fusekit.profiles"] and '"dim": "seq"' in stored["fusekit.profiles"]
    feeds = [tokens(b, s, seed) for seed, (b, s) in enumerate([(1, 1), (4, 16), (8, 128), (3, 7)])]
    assert_same_outputs(raw("encoder-tiny"), model, feeds, atol=1e-4)


@pytest.mark.trt
def test_tensorrt_builds_from_the_stored_profile(tmp_path):
    path = tmp_path / "encoder.onnx"
    onnx.save(optimized("encoder-tiny", dynamic=RANGES), path)
    result = fk.build(path, optimize=False)  # no --dynamic: the ranges come from the model
    assert result.engine and result.sidecar["profiles"][0] == [
        {"input": name, "min": [1, 1], "opt": [4, 16], "max": [8, 128]} for name in ("input_ids", "attention_mask")]


def test_decoder_names_its_dims_and_folds_completely_when_fixed():
    """GPT-2 style: Conv1D reshapes around Gemm, a causal-mask buffer sliced to [:seq, :seq]."""
    before, model = raw("decoder-tiny"), optimized("decoder-tiny")
    names = {d for vi in model.graph.value_info for d in dims(vi) if isinstance(d, str)}
    assert names <= {"batch", "seq", "batch*seq", "min(128,seq)"}, names
    assert shape_nodes(model) < shape_nodes(before) // 4
    feeds = [{"input_ids": np.random.default_rng(s).integers(0, 1000, (b, n))} for s, (b, n) in enumerate([(1, 8), (3, 16)])]
    assert_same_outputs(before, model, feeds, atol=1e-4)
    fixed = optimized("decoder-tiny", fixed=(("batch", 2), ("seq", 16)))
    assert shape_nodes(fixed) == 0
    assert_same_outputs(before, fixed, [{"input_ids": np.random.default_rng(5).integers(0, 1000, (2, 16))}], atol=1e-4)
