"""``fusekit optimize A B DIR/ --output-dir OUT [-j N]``: every model is tried, outputs are
OUT/<stem>.onnx, one summary at the end, and the exit code is the most severe one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fusekit.cli import main
from fusekit.verify import session
from tests.distributions import activate, make_distribution
from tests.test_cli import RELU, SMALL, WRONG_PASS, write

SCALE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) <float[4] s = {1.0, 2.0, 3.0, 4.0}, float[1] zero = {0.0}> {
  a = Identity(x)
  b = Add(a, zero)
  y = Mul(b, s)
}"""


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    write(folder, SMALL, "small.onnx")
    write(folder, SCALE, "scale.onnx")
    (folder / "broken.onnx").write_bytes(b"not a model")
    return folder


def _same_outputs(original: Path, optimized: Path) -> None:
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, onnx.load(original).graph.input[0].type.tensor_type
                                                           .shape.dim[1].dim_value)).astype(np.float32)
        np.testing.assert_allclose(session(onnx.load(optimized)).run(None, {"x": x})[0],
                                   session(onnx.load(original)).run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_a_folder_in_two_processes_tries_every_model_and_exits_with_the_worst(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "out"
    out.mkdir()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["optimize", str(folder), "--output-dir", str(out), "-j", "2"]) == 2
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["scale.onnx", "small.onnx"]
    for name in ("scale.onnx", "small.onnx"):
        _same_outputs(folder / name, out / name)
        assert "Identity" not in {n.op_type for n in onnx.load(out / name).graph.node}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
    assert "fusekit optimize: 3 models" in captured.out and "2 of 3 models optimized; 1 failed" in captured.out
    assert "broken.onnx: not a valid ONNX file" in captured.err
    # the same in one process, files named one by one, as JSON
    assert main(["optimize", str(folder / "small.onnx"), str(folder / "broken.onnx"), "--output-dir", str(out),
                 "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 2
    assert [(Path(m["model"]).name, m["code"]) for m in data["models"]] == [("small.onnx", 0), ("broken.onnx", 2)]
    assert data["models"][0]["written"] == [str(out / "small.onnx")] and data["models"][0]["report"]["after"]


def test_exit_code_is_the_most_severe_2_over_1_over_0(tmp_path, monkeypatch, capsys):
    wrong = make_distribution(tmp_path / "site", "wrong-passes", {"drop-relu": "wrong_passes_mod:DropRelu"},
                              {"wrong_passes_mod": WRONG_PASS})
    activate(monkeypatch, wrong)
    out = tmp_path / "out"
    out.mkdir()
    ok, mismatch = write(tmp_path, SMALL, "ok.onnx"), write(tmp_path, RELU, "relu.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"")
    assert main(["optimize", str(ok), "--output-dir", str(out), "--verify"]) == 0
    assert main(["optimize", str(ok), str(mismatch), "--output-dir", str(out), "--verify"]) == 1
    assert main(["optimize", str(mismatch), str(broken), str(ok), "--output-dir", str(out), "--verify"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["ok.onnx"]  # a mismatch writes nothing
    assert "does not match the original" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["{a}", "{b}", "-o", "{out}/x.onnx"], "names one model's output; for several models or a folder give"),
    (["{a}", "{b}"], "give --output-dir FOLDER"),
    (["{a}", "{b}", "--output-dir", "{out}/missing"], "no such folder (create it first)"),
    (["{a}", "{sub}/a.onnx", "--output-dir", "{out}"], "would all be written to"),
    (["{a}", "{b}", "--output-dir", "{out}", "--trace", "n"], "traces a node of one model"),
    (["{a}", "--output-dir", "{here}"], "is an input model"),
    (["{a}", "{here}/nope.onnx", "--output-dir", "{out}"], "nope.onnx: no such file or folder"),
    (["{a}", "-o", "{out}"], "names a folder; give a file name"),
    (["{a}"], "give -o OUTPUT.onnx (one model) or --output-dir FOLDER"),
])
def test_refused_before_any_model_is_read(args, message, tmp_path, capsys):
    out, sub = tmp_path / "out", tmp_path / "sub"
    out.mkdir()
    sub.mkdir()
    names = {"a": write(tmp_path, SMALL, "a.onnx"), "b": write(tmp_path, SCALE, "b.onnx"),
             "sub": sub, "out": out, "here": tmp_path}
    write(sub, SMALL, "a.onnx")
    assert main(["optimize", *[a.format(**names) for a in args]]) == 2
    assert message in capsys.readouterr().err
    assert list(out.iterdir()) == []
