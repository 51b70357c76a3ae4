"""fusekit build / compare / inspect: exit codes, the engine sidecar, reports."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import onnx
import pytest

from fusekit.builder import backend as backends
from fusekit.builder import device
from fusekit.builder.options import supported_ccs
from fusekit.cli import main
from tests.test_builder import TWO_UNIQUES_AND_A_CONTRIB_OP, schema
from tests.zoo_models import zoo_model

BACKEND = backends.installed()
RELU = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8] x) => (float[N,8] y) { t = Identity(x)  y = Relu(t) }"""


def write(tmp_path: Path, text: str, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(onnx.parser.parse_model(text), path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_gpu(monkeypatch):
    """Make this machine GPU-less whatever it has, so inspect never deserializes."""
    monkeypatch.setattr(device, "current_compute_capability", lambda: None)


def test_no_backend_exits_3_saying_how_to_install(tmp_path, monkeypatch, capsys):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(backends, "import_module", missing)
    model = write(tmp_path, RELU)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--dynamic", "N=1:2:4"]) == 3
    assert main(["compare", str(model), str(model)]) == 3
    err = capsys.readouterr().err
    assert 'pip install "fusekit[trt-rtx]"' in err and "neither tensorrt nor tensorrt_rtx" in err
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("argv, message", [
    (["--opt-level", "7"], "--opt-level 7: expected 0..5"),
    (["--workspace", "0"], "--workspace 0"),
    (["--dynamic", "N=4:2:1"], "0 <= MIN <= OPT <= MAX"),
    (["--dynamic", "N"], "expected DIM=MIN:OPT:MAX"),
])
def test_bad_options_exit_2_with_or_without_a_backend(argv, message, tmp_path, capsys):
    model = write(tmp_path, RELU)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.trt
def test_dynamic_dim_without_range_exits_2_with_suggestion(tmp_path, capsys):
    model = write(tmp_path, RELU)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dim 'N' (x axis 0): add --dynamic N=1:8:32" in err[0]
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--dynamic", "M=1:2:3", "--dynamic", "N=1:2:3"]) == 2
    assert "--dynamic M=1:2:3: the model's inputs have no dim named 'M' (dynamic dims: N)" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.trt
def test_parse_failure_exits_4_listing_every_node(tmp_path, capsys):
    model_proto = onnx.parser.parse_model(TWO_UNIQUES_AND_A_CONTRIB_OP)
    for i, node in enumerate(model_proto.graph.node):
        node.name = f"my_{node.op_type}_{i}"
    onnx.save(model_proto, tmp_path / "bad.onnx")
    engine = tmp_path / "bad.engine"
    assert main(["build", str(tmp_path / "bad.onnx"), "-o", str(engine), "--no-optimize"]) == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("fusekit: error: ") and "rejected the model (3 errors)" in err[0]
    assert [line.split(":")[1].strip() for line in err[1:4]] == [
        "node my_Unique_1 (Unique)", "node my_Unique_2 (Unique)", "node my_FastGelu_3 (com.microsoft.FastGelu)"]
    assert err[4].startswith("fusekit: hint: ") and len(err) == 5
    assert not engine.exists() and not Path(str(engine) + ".json").exists()


@pytest.mark.trt
def test_build_writes_engine_and_sidecar(tmp_path, capsys):
    model = zoo_model("resnet-tiny")
    engine = tmp_path / "r.engine"
    report_json = tmp_path / "r.report.json"
    assert main(["build", str(model), "-o", str(engine), "--dynamic", "batch=1:4:8", "--report",
                 "--report-json", str(report_json)]) == 0
    out = capsys.readouterr().out
    assert "engine layers" in out and f"wrote {engine}, {engine}.json" in out
    assert "Conv+Relu" in out  # the --report table (BN is folded by fusekit or fused by TensorRT)
    side = json.loads(Path(f"{engine}.json").read_text())
    jsonschema.validate(side, schema("engine-sidecar"))
    assert side["backend"] == {"name": BACKEND.name, "version": BACKEND.version}
    assert side["engine"] == {"file": "r.engine", "bytes": engine.stat().st_size, "sha256": sha256(engine)}
    assert side["source_model"] == {"path": str(model), "sha256": sha256(model), "optimized": True}
    assert side["profiles"] == [[{"input": "images", "min": [1, 3, 64, 64], "opt": [4, 3, 64, 64],
                                  "max": [8, 3, 64, 64]}]]
    assert side["precision"] == "fp32"
    if BACKEND.is_rtx:
        assert side["compute_capability"]["chosen_by"] == "tensorrt_rtx default"
        assert side["compute_capability"]["or_later"] and "8.6" in side["compute_capability"]["targets"]
    report = json.loads(report_json.read_text())
    jsonschema.validate(report, schema("build-report"))
    assert report["optimized"] and report["engine_bytes"] == engine.stat().st_size


@pytest.mark.trt
def test_profile_stored_in_the_model_is_used(tmp_path, capsys):
    from fusekit import profiles

    proto = onnx.parser.parse_model(RELU)
    profiles.write_profiles(proto, profiles.parse_dynamic_args(["N=2:3:5"]))
    onnx.save(proto, tmp_path / "m.onnx")
    assert main(["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine"), "--report-json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["profile"] == [{"input": "x", "min": [2, 8], "opt": [3, 8], "max": [5, 8]}]
    # --dynamic overrides the stored range
    assert main(["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine"), "--dynamic", "N=1:1:1",
                 "--report-json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"][0]["max"] == [1, 8]


@pytest.mark.trt
def test_timing_cache_option(tmp_path, capsys):
    model = write(tmp_path, RELU)
    cache = tmp_path / "timing.cache"
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--dynamic", "N=1:2:4",
                 "--timing-cache", str(cache)]) == 0
    err = capsys.readouterr().err
    if BACKEND.is_rtx:
        assert "--timing-cache has no effect with tensorrt_rtx" in err and not cache.exists()
    else:
        assert cache.stat().st_size > 0 and "timing cache" in err


@pytest.mark.trt
def test_build_failure_exits_4_with_the_builders_errors(tmp_path):
    """A real build failure: tensorrt_rtx cannot compile an FP32 GEMM for Turing (SM 7.5). Run in
    its own process: after a failed build, tensorrt_rtx builds later engines differently."""
    if "7.5" not in supported_ccs(BACKEND):
        pytest.skip(f"{BACKEND.describe()} cannot target Turing, the failure this test relies on")
    model = write(tmp_path, """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,3] y) <float[3,4] w = {1.,2.,3.,4.,5.,6.,7.,8.,9.,10.,11.,12.}> {
          y = Gemm <transB: int = 1> (x, w) }""")
    engine = tmp_path / "m.engine"
    done = subprocess.run([sys.executable, "-m", "fusekit", "build", str(model), "-o", str(engine),
                           "--compute-capability", "7.5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr
    assert "failed to build the engine: " in done.stderr and "Turing" in done.stderr
    assert not engine.exists()


@pytest.fixture
def built_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    model = write(folder, RELU)
    engine = folder / "m.engine"
    assert main(["build", str(model), "-o", str(engine), "--dynamic", "N=1:2:4"]) == 0
    return engine


@pytest.mark.trt
def test_inspect_without_gpu_reports_the_sidecar(built_engine, no_gpu, capsys):
    capsys.readouterr()
    assert main(["inspect", str(built_engine)]) == 0
    out = capsys.readouterr().out
    assert f"{BACKEND.name} {BACKEND.version}" in out and "1x8 / 2x8 / 4x8" in out
    assert "no NVIDIA GPU here" in out
    # the note that "what follows is its sidecar" comes before the sidecar's table
    assert out.index("what follows is its sidecar") < out.index(f"{BACKEND.name} {BACKEND.version}")
    assert main(["inspect", str(built_engine), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["deserialized"] is False and data["sidecar"]["engine"]["sha256"] == sha256(built_engine)


def edit_sidecar(engine: Path, change) -> None:
    path = Path(f"{engine}.json")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.trt
def test_inspect_refuses_engine_of_another_tensorrt_version(built_engine, no_gpu, capsys):
    edit_sidecar(built_engine, lambda d: d["backend"].update(version="0.9.0"))
    capsys.readouterr()
    assert main(["inspect", str(built_engine)]) == 2
    err = capsys.readouterr().err
    assert f"built with {BACKEND.name} 0.9.0, this machine has {BACKEND.name} {BACKEND.version}" in err
    assert "rebuild it here" in err


@pytest.mark.trt
def test_inspect_refuses_engine_for_another_gpu_architecture(built_engine, monkeypatch, capsys):
    edit_sidecar(built_engine, lambda d: d["compute_capability"].update(targets=["8.6"], or_later=False))
    monkeypatch.setattr(device, "current_compute_capability", lambda: "8.9")
    capsys.readouterr()
    assert main(["inspect", str(built_engine)]) == 2
    err = capsys.readouterr().err
    assert "built for compute capability 8.6; this GPU is 8.9" in err
    edit_sidecar(built_engine, lambda d: d["compute_capability"].update(targets=["8.0", "8.6"], or_later=True))
    monkeypatch.setattr(device, "current_compute_capability", lambda: "7.5")
    assert main(["inspect", str(built_engine)]) == 2
    assert "8.0, 8.6 or later; this GPU is 7.5" in capsys.readouterr().err


@pytest.mark.trt
def test_inspect_refuses_stale_or_missing_sidecar(built_engine, no_gpu, capsys):
    built_engine.write_bytes(built_engine.read_bytes() + b"x")
    capsys.readouterr()
    assert main(["inspect", str(built_engine)]) == 2
    assert "sidecar describes another engine" in capsys.readouterr().err
    Path(f"{built_engine}.json").unlink()
    assert main(["inspect", str(built_engine)]) == 2
    assert "no sidecar m.engine.json" in capsys.readouterr().err
    assert main(["inspect", str(built_engine.parent / "nope.engine")]) == 2


@pytest.mark.trt
def test_compare_shows_layer_difference_and_fusions(tmp_path, capsys):
    from fusekit import api

    raw = zoo_model("resnet-tiny")
    optimized = tmp_path / "opt.onnx"
    onnx.save(api.optimize(raw), optimized)
    assert main(["compare", str(raw), str(optimized), "--dynamic", "batch=1:2:4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    jsonschema.validate(data, schema("build-comparison"))
    assert data["engine_layers_difference"] == data["b"]["engine_layers"] - data["a"]["engine_layers"] <= 0
    assert data["a"]["onnx_nodes"] >= data["b"]["onnx_nodes"]
    assert main(["compare", str(raw), str(optimized), "--dynamic", "batch=1:2:4"]) == 0
    out = capsys.readouterr().out
    assert "engine layers" in out and "fused in A only" in out and "nodes of A not in B" in out


def test_only_the_builder_imports_tensorrt():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*(root / "fusekit").rglob("*.py"), *(root / "passes").rglob("*.py"), *(root / "plugins").rglob("*.py")]:
        if (root / "fusekit" / "builder") in path.parents:
            continue
        text = path.read_text()
        if any(f"import {m}" in text or f"from {m}" in text for m in ("tensorrt", "tensorrt_rtx")):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
    # and lazily: importing the CLI, the API and the builder package loads no TensorRT
    code = ("import sys, fusekit.cli, fusekit.api, fusekit.builder.engine, fusekit.builder.inspection; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'tensorrt_rtx')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` (a module of ``package``) imports, at any depth, relative ones resolved;
    ``from a import b`` counts as importing ``a`` and ``a.b``."""
    found = set()
    for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            found.update(alias.name for alias in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            base = stmt.module or ""
            if stmt.level:
                parent = package.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in stmt.names)
    return found


def test_no_pass_imports_another_public_pass_module():
    root = Path(__file__).resolve().parents[1]
    public = {ep.module for group in ("fusekit.passes", "fusekit.plugins") for ep in entry_points(group=group)}
    assert {"fusekit.passes.fold_batchnorm", "fusekit.plugins.efficient_nms"} <= public  # the entry points are seen
    offenders = []
    for folder in ("passes", "plugins"):
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            module = ".".join(("fusekit", folder, *parts)).removesuffix(".__init__")
            package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            for imported in sorted((_imported_modules(path, package) & public) - {module}):
                offenders.append(f"{path.relative_to(root)} imports {imported}")
    assert offenders == []


@pytest.mark.trt
def test_inspect_without_the_engines_backend_reports_the_sidecar(built_engine, monkeypatch, capsys):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    targets = json.loads(Path(f"{built_engine}.json").read_text())["compute_capability"]["targets"]
    monkeypatch.setattr(backends, "import_module", missing)
    monkeypatch.setattr(device, "current_compute_capability", lambda: (targets or ["8.6"])[0])  # a GPU it runs on
    capsys.readouterr()
    assert main(["inspect", str(built_engine)]) == 0
    out = capsys.readouterr().out
    assert f"{BACKEND.name} is not installed here: the engine cannot be loaded on this machine" in out
