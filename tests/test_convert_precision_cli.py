"""The precision options of ``fusekit optimize`` and ``fusekit build`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

import fusekit.api as fk
from fusekit.cli import main
from tests.helpers import parse

MODEL = """
g (float[N,4] x) => (float[N,4] y) {
    [mm] a = Mul(x, x)
    [the_exp] e = Exp(a)
    [act] y = Relu(e)
}"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(parse(MODEL), path)
    return path


def test_optimize_precision_report_and_trace(model, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--precision", "fp16", "--keep-float", "act",
                 "--trace", "the_exp"]) == 0
    text = capsys.readouterr().out
    assert "precision: fp16 (1 nodes converted, 2 kept in FP32" in text
    assert "kept FP32: the_exp (Exp): Exp overflows the target type" in text
    assert "kept FP32: act (Relu): --keep-float names this node" in text
    assert "output y: max |error|" in text
    assert "trace the_exp: round 1: convert-precision: kept FP32: Exp overflows the target type" in text
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(
        onnx.load(out)).graph.value_info}
    assert types["a"] == onnx.TensorProto.FLOAT16


def test_optimize_precision_json(model, tmp_path, capsys):
    data = tmp_path / "d.npy"
    np.save(data, np.ones((2, 3, 4), np.float32))  # two samples of [3, 4]
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--precision", "fp16",
                 "--precision-io", "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["precision"]
    assert report["type"] == "fp16" and report["io"] == "fp16" and report["error_inputs"] == "data"
    assert report["converted_nodes"] == 2 and report["kept_nodes"] == 1
    assert report["kept"] == [{"node": "the_exp", "op": "Exp",
                               "reason": "Exp overflows the target type for inputs above ~11"}]
    assert set(report["outputs"]) == {"y"}


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "(--precision): expected fp16 or bf16 (or none), got 'fp8'"),
    (["--keep-float", "Exp"], "need --precision"),
    (["--precision", "fp16", "--data", "missing.npz"], "(--data): missing.npz: no such file"),
])
def test_bad_precision_options_exit_2_and_write_nothing(model, tmp_path, capsys, args, message):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _backend():
    from fusekit.builder import backend as backends

    return backends.installed()


@pytest.mark.trt
@pytest.mark.skipif(_backend() is None, reason="no TensorRT backend imports")
def test_build_fp16_no_optimize_converts_and_records_the_graph_types(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(parse("""
    g (float[N,8] x) => (float[N,8] y) {
        w = Constant<value = float[8,8] {%s}>()
        [mm] a = MatMul(x, w)
        [act] y = Relu(a)
    }""".replace("%s", ", ".join(["0.125"] * 64))), model)
    engine = tmp_path / "m.engine"
    report = tmp_path / "report.json"
    assert main(["build", str(model), "-o", str(engine), "--no-optimize", "--fp16", "--dynamic", "N=1:2:4",
                 "--report-json", str(report)]) == 0
    captured = capsys.readouterr()
    assert "converted to fp16 in the graph (strongly typed build): 3 nodes converted" in captured.out + captured.err
    assert json.loads(report.read_text())["engine"]["precisions"]["float16"] >= 1
    side = json.loads((tmp_path / "m.engine.json").read_text())
    schema = json.loads((Path(fk.__file__).parent / "schemas" / "engine-sidecar.schema.json").read_text())
    jsonschema.validate(side, schema)
    assert side["precision"] == "fp32+fp16" and side["source_model"]["optimized"] is False
