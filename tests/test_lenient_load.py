"""Lenient in, strict out (issue 15 points 1 and 5): the edge-case corpus of
tests/edge_models.py, each model optimized (repaired with one warning line each) or refused
with the reason, and the outputs of every handled model compared with onnxruntime's.
``--strict`` restores the refusals (exit 2) on optimize, lint, check-trt and build."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fusekit import api
from fusekit.cli import main
from fusekit.errors import InputError
from tests import edge_models
from tests.helpers import feeds_for, run_ort

# what each model needs: the warning fusekit gives, and whether onnxruntime runs it
EXPECTED = {
    "unsorted_graph": ("not in topological order; sorted them", True),
    "unnamed_graph": ("the graph has no name; named it 'main'", True),
    "duplicate_value_info": ("duplicate value_info (a); dropped the copies", True),
    "contradictory_value_info": ("contradictory value_info (one name, several types: a); dropped it", True),
    "output_of_unknown_rank": (None, True),
    "output_without_type": (None, True),
    "inference_error_on_one_node": ("value_info contradicts shape inference (y); dropped it", True),
    "unknown_op_custom_domain": ("output 'z' has unknown rank and shape inference cannot find it; kept with an "
                                 "unknown shape", False),
    "unknown_op_default_domain": ("output 'z' has unknown rank and shape inference cannot find it; kept with an "
                                  "unknown shape", False),
    "weightless": ("2 initializer(s) have no data (a weightless model: 'w', 'b'); optimized without reading them", False),
    "attention_block": (None, True),
    "if_subgraph": (None, True),
}


def _runs_in_ort(model: onnx.ModelProto) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal of onnxruntime's
        return False
    return True


def _feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    feeds = {}
    for vi in model.graph.input:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
            feeds[vi.name] = np.array(batch % 2 == 0)
        else:
            shape = [d.dim_value or batch for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxruntime can run it, changed in nothing it computes: annotations
    (value_info) dropped, nodes sorted, graph named, where onnxruntime refuses it as it is."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    if not _runs_in_ort(ref):
        del ref.graph.value_info[:]
    if not _runs_in_ort(ref):
        order = {n.name: i for i, n in enumerate(edge_models._body()[0])}
        ref.graph.node.sort(key=lambda n: order.get(n.name, len(order)))
        ref.graph.name = ref.graph.name or "main"
    return ref


def test_the_corpus_is_what_this_test_expects():
    assert set(EXPECTED) == set(edge_models.CASES)


@pytest.mark.parametrize("name", sorted(edge_models.CASES))
def test_each_edge_case_is_optimized_with_one_warning_and_computes_the_same(name, caplog):
    model = edge_models.CASES[name]()
    before = model.SerializeToString()
    warning, runnable = EXPECTED[name]
    with caplog.at_level(logging.WARNING, logger="fusekit"):
        optimized = api.optimize(model)
    assert model.SerializeToString() == before
    lines = [r.getMessage() for r in caplog.records if r.name == "fusekit.repair"]
    if warning is None:
        assert lines == []
    else:
        assert len([line for line in lines if warning in line]) == 1, lines
        assert all("\n" not in line for line in lines)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    if runnable:
        reference = _reference(model)
        assert _runs_in_ort(reference), name
        for batch in (1, 3):
            feeds = _feeds(model, batch)
            expected, got = run_ort(reference, feeds), run_ort(optimized, feeds)
            for key in expected:
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_weightless_model_keeps_its_tensors_without_data():
    optimized = api.optimize(edge_models.weightless())
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "Add", "Relu"]  # the Identity is gone
    for t in optimized.graph.initializer:
        assert not t.raw_data and not t.float_data and list(t.dims)


def test_weightless_constant_is_folded_by_no_pass():
    """A Transpose of a weightless weight stays (folding it would need the values)."""
    model = edge_models.weightless()
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="t"))
    model.graph.node[1].input[1] = "wt"
    optimized = api.optimize(model)
    assert [n.op_type for n in optimized.graph.node] == ["Transpose", "MatMul", "Add", "Relu"]


def test_a_pass_reading_missing_weights_is_refused_naming_pass_and_tensor():
    """A pass that reads a weightless tensor's values directly stops the run with an
    InputError (exit 2) naming itself and the tensor, never a guess or a crash."""
    from types import SimpleNamespace

    from fusekit.model_io import load_model

    graph = load_model(edge_models.weightless()).graph
    weight = graph.tensors()["w"]

    def a_pass_run(ctx):
        return weight.values

    with pytest.raises(InputError, match="pass demo-pass needs the values of tensor 'w', which has no data"):
        a_pass_run(SimpleNamespace(current_pass="demo-pass"))


REFUSED_BY_STRICT = ["unsorted_graph", "unnamed_graph", "duplicate_value_info", "contradictory_value_info",
                     "inference_error_on_one_node", "unknown_op_custom_domain", "unknown_op_default_domain",
                     "weightless"]


@pytest.mark.parametrize("name", REFUSED_BY_STRICT)
def test_strict_restores_the_refusal(name):
    with pytest.raises(InputError):
        api.run(edge_models.CASES[name](), strict=True)


@pytest.mark.parametrize("command", [["optimize", "-o", "{out}"], ["lint"], ["check-trt"],
                                     ["build", "-o", "{engine}"]])
def test_strict_on_every_command_exits_2(tmp_path, capsys, command):
    path = tmp_path / "m.onnx"
    onnx.save(edge_models.unsorted_graph(), path)
    args = [a.format(out=tmp_path / "o.onnx", engine=tmp_path / "m.engine") for a in command]
    assert main([args[0], str(path), *args[1:], "--strict"]) == 2
    assert "not in topological order" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_without_strict_optimize_cli_warns_once_and_succeeds(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    onnx.save(edge_models.unnamed_graph(), path)
    with caplog.at_level(logging.WARNING, logger="fusekit"):
        assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx")]) == 0
    assert [r.getMessage() for r in caplog.records].count(f"{path}: the graph has no name; named it 'main'") == 1
    assert onnx.load(tmp_path / "o.onnx").graph.name == "main"
