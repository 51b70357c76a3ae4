"""The fusekit command line: reports, JSON, --trace, and one exit code per kind of failure."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from fusekit.cli import main
from fusekit.verify import session
from tests.distributions import activate, make_distribution

SMALL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) <float[3] c = {1.0, 2.0, 3.0}, float[1] one = {1.0}> {
  t = Identity(x)
  u = Mul(t, one)
  y = Add(u, c)
}"""


def write(tmp_path: Path, text: str, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(onnx.parser.parse_model(text), path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_model import export

    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    export(str(path))
    return path


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fusekit 0.1.0")


def test_optimize_cnn_prints_report_verifies_and_keeps_input(cnn, tmp_path, capsys):
    before = digest(cnn)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "nodes" in text and "Identity" in text and "verify: outputs match" in text
    assert digest(cnn) == before
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized, full_check=True)
    assert not any(n.op_type in ("Identity", "Constant") for n in optimized.graph.node)
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(session(optimized).run(None, {"images": x})[0],
                                   session(onnx.load(cnn)).run(None, {"images": x})[0], rtol=1e-4, atol=1e-5)


def test_json_report_and_trace(cnn, tmp_path, capsys):
    node = next(n.name for n in onnx.load(cnn).graph.node if n.op_type == "Identity")
    assert main(["optimize", str(cnn), "-o", str(tmp_path / "o.onnx"), "--json", "--trace", node]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["after"]["nodes"] < data["before"]["nodes"]
    assert data["written"] == [str(tmp_path / "o.onnx")]
    assert {p["name"] for p in data["passes"]} >= {"fold-constants", "remove-noops"}
    assert data["trace"]["node"] == node
    assert data["trace"]["events"] and data["trace"]["events"][0]["pass_name"] == "fold-constants"
    assert [(s["round"], s["pass_name"], s["verdict"]) for s in data["trace"]["steps"]] == [(1, "fold-constants", "rewrote")]
    assert data["trace"]["fate"].startswith("gone from the optimized model: fold-constants, round 1:")


def test_trace_text_names_the_pass(tmp_path, capsys):
    model = write(tmp_path, SMALL)
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--trace", "Identity_0"]) == 0
    text = capsys.readouterr().out
    assert "trace Identity_0: round 1: remove-noops: Identity removed\n" in text
    assert text.index("round 1: remove-noops") < text.index("trace Identity_0: fate: gone from the optimized model")


def test_passes_and_skip(tmp_path, capsys):
    model = write(tmp_path, SMALL)
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--skip", "remove-noops", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "remove-noops" not in {p["name"] for p in data["passes"]}
    assert data["after"]["ops"].get("Identity") == 1
    assert main(["passes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed][:1] == ["eliminate-dead-code"]
    assert all(p["package"] == "fusekit" for p in listed)


CASES = {
    "missing file": (None, "no such file"),
    "truncated": ("truncated", "truncated or corrupt"),
    "not onnx": ("text", "not a valid ONNX file"),
    "empty protobuf": ("empty", "not an ONNX model"),
    "unsupported opset": ("""<ir_version: 8, opset_import: ["" : 99]> g (float[2] x) => (float[2] y) { y = Relu(x) }""",
                          "unsupported opset 99"),
    "op unknown at opset": ("""<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Gelu(x) }""",
                            "No Op registered for Gelu with domain_version of 17"),
    "shape inference fails": ("""<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x, float[4,5] z) => (float[2,3] y)
                                 { y = Add(x, z) }""", "invalid model"),
}


# What onnx.checker refuses but a runtime may run (issue 15): a warning unless --strict.
ACCEPTED_UNLESS_STRICT = {"op unknown at opset", "shape inference fails"}


@pytest.mark.parametrize("case", sorted(ACCEPTED_UNLESS_STRICT))
def test_checker_refusals_are_warnings_without_strict(case, tmp_path, caplog):
    content, message = CASES[case]
    model = write(tmp_path, content)
    with caplog.at_level("WARNING", logger="fusekit"):
        assert main(["optimize", str(model), "-o", str(tmp_path / "out.onnx")]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fusekit.repair"]
    assert message in line and line.endswith("accepted as it is (--strict refuses it)")
    assert (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    content, message = CASES[case]
    model = tmp_path / "model.onnx"
    if content == "truncated":
        model.write_bytes(onnx.parser.parse_model(SMALL).SerializeToString()[:60])
    elif content == "text":
        model.write_text("hello, this is not a model\n")
    elif content == "empty":
        model.write_bytes(b"")
    elif content is not None:
        write(tmp_path, content)
    out = tmp_path / "out.onnx"
    out.write_text("previous result")  # must survive a failed run
    strict = ["--strict"] if case in ACCEPTED_UNLESS_STRICT else []
    assert main(["optimize", str(model), "-o", str(out), *strict]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusekit: error:") and message in err[0]
    assert out.read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out.onnx"} | ({"model.onnx"} if content else set()))


def test_usage_errors_exit_2(tmp_path, capsys):
    model = write(tmp_path, SMALL)
    assert main(["optimize", str(model)]) == 2  # no -o
    assert main(["optimize", str(model), "-o", str(model)]) == 2  # never over the input
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "nope"]) == 2
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--trace", "nope"]) == 2
    assert main(["optimize", str(model), "-o", str(tmp_path / "missing-dir" / "o.onnx")]) == 2
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--input-shape", "nope:1x3"]) == 2
    assert not (tmp_path / "o.onnx").exists()
    err = capsys.readouterr().err
    for message in ("give -o OUTPUT.onnx (one model) or --output-dir FOLDER", "is the input model", "unknown pass nope",
                    "--trace nope: no node of that name", "does not exist", "the model has no such input (inputs: x [N,3])"):
        assert message in err


def test_custom_domain_ops_are_kept(tmp_path, capsys):
    model = write(tmp_path, """<ir_version: 8, opset_import: ["" : 17, "com.acme": 1]>
        g (float[N,3] x) => (float[N,3] y) { t = Identity(x)  u = com.acme.Frobnicate <alpha: float = 2.0> (t)  y = Relu(u) }""")
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out)]) == 0
    optimized = onnx.load(out)
    assert [(n.op_type, n.domain) for n in optimized.graph.node] == [("Frobnicate", "com.acme"), ("Relu", "")]
    assert {(o.domain, o.version) for o in optimized.opset_import} >= {("com.acme", 1), ("", 17)}


WRONG_PASS = """
from fusekit.graph_edit import bypass
from fusekit.pass_infra import Match, NodeRewritePass, Stage

class DropRelu(NodeRewritePass):
    '''A deliberately wrong pass: removes Relu.'''
    name = "drop-relu"
    stage = Stage.FUSION
    ops = frozenset({"Relu"})
    def check(self, graph, node, ctx):
        return Match("Relu dropped")
    def rewrite(self, graph, node, match, ctx):
        bypass(graph, node)

class Crash(NodeRewritePass):
    '''A pass that crashes.'''
    name = "crash"
    stage = Stage.FUSION
    ops = frozenset({"Relu"})
    def check(self, graph, node, ctx):
        raise RuntimeError("boom")
"""

RELU = """<ir_version: 8, opset_import: ["" : 17]> g (float[N,3] x) => (float[N,3] y) { t = Neg(x)  y = Relu(t) }"""


def test_verify_mismatch_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys):
    activate(monkeypatch, make_distribution(tmp_path / "site", "wrong-passes",
                                            {"drop-relu": "wrong_passes_mod:DropRelu"}, {"wrong_passes_mod": WRONG_PASS}))
    model, out = write(tmp_path, RELU), tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--verify"]) == 1
    assert "does not match the original" in capsys.readouterr().err
    assert not out.exists()
    assert main(["optimize", str(model), "-o", str(out)]) == 0  # without --verify nothing notices


def test_crashing_pass_exits_70_naming_pass_and_package(tmp_path, monkeypatch, capsys):
    activate(monkeypatch, make_distribution(tmp_path / "site", "crashy-passes",
                                            {"crash": "crashy_passes_mod:Crash"}, {"crashy_passes_mod": WRONG_PASS}))
    model, out = write(tmp_path, RELU), tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out)]) == 70
    err = capsys.readouterr().err
    assert "pass crash (from crashy-passes) failed: RuntimeError: boom" in err
    assert not out.exists()


def test_console_script_runs(tmp_path):
    model = write(tmp_path, SMALL)
    done = subprocess.run([sys.executable, "-m", "fusekit", "optimize", str(model), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fusekit", "optimize", str(tmp_path / "none.onnx"), "-o", "x.onnx"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0


def _readme_model(tmp_path: Path) -> Path:
    """The model the README's first command builds (examples/make_model.py)."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_model import export

    path = tmp_path / "model.onnx"
    export(str(path))
    return path


def test_trace_of_a_batchnorm_behind_identity_tells_the_story_in_pipeline_order(tmp_path, capsys):
    """The README model's second BatchNorm reads its scale through Identity nodes: the cleanup
    passes make it constant first, so fold-batchnorm folds it when it runs; no verdict is
    taken before or after the pass ran, and the fate comes last."""
    model = _readme_model(tmp_path)
    node = "/block/block.1/BatchNormalization"
    assert main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--trace", node]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"trace {node}:")]
    assert lines[-2] == f"trace {node}: round 1: fold-batchnorm: BatchNormalization folded into Conv '/block/block.0/Conv'"
    assert lines[-1].startswith(f"trace {node}: fate: gone from the optimized model: fold-batchnorm, round 1")
    assert not any("declined" in line or "would rewrite" in line for line in lines)
    # with the cleanup passes left out, the scale stays behind Identity: the declines are what happened
    assert main(["optimize", str(model), "-o", str(tmp_path / "o2.onnx"), "--json", "--trace", node,
                 "--skip", "fold-constants,remove-noops,dedupe-initializers"]) == 0
    trace = json.loads(capsys.readouterr().out)["trace"]
    assert [(s["pass_name"], s["verdict"], s["message"]) for s in trace["steps"]] == [
        ("fold-batchnorm", "declined", "its scale is not constant"),
        ("decompose-batchnorm", "declined", "its scale is not constant")]
    assert trace["fate"] == "still in the optimized model"
