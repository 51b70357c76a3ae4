"""Small things a new user reads in the first hour, each true (issue 17, point 5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusekit.builder import backend as backends
from fusekit.cli import main
from fusekit.model_io import EXTERNAL_DATA_THRESHOLD
from tests.test_cli import SMALL, write

ROOT = Path(__file__).resolve().parents[1]


def test_check_trt_says_what_answered_when_every_node_parses(tmp_path, capsys):
    model = write(tmp_path, SMALL)
    assert main(["check-trt", str(model), "--table", "tensorrt-10.15"]) == 0
    assert capsys.readouterr().out.strip() == f"{model}: every node parses (checked by the table tensorrt-10.15)"
    assert main(["check-trt", str(model), "--json", "--table", "tensorrt-10.15"]) == 0
    assert json.loads(capsys.readouterr().out)["checked_by"] == "table tensorrt-10.15"
    backend = backends.installed()
    if backend is not None:
        assert main(["check-trt", str(model)]) == 0
        assert f"(checked by the {backend.describe()} parser)" in capsys.readouterr().out


def test_verify_says_static_shapes_when_every_input_is_fixed(tmp_path, capsys):
    model = write(tmp_path, SMALL)
    assert main(["optimize", str(model), "-o", str(tmp_path / "a.onnx"), "--verify"]) == 0
    assert "dynamic dims = 1, 3)" in capsys.readouterr().out
    assert main(["optimize", str(model), "-o", str(tmp_path / "b.onnx"), "--verify", "--input-shape", "x:2x3"]) == 0
    text = capsys.readouterr().out
    assert "inputs at their static shapes)" in text and "dynamic dims" not in text
    assert main(["optimize", str(model), "-o", str(tmp_path / "c.onnx"), "--verify", "--dim", "N=4", "--json"]) == 0
    verify = json.loads(capsys.readouterr().out)["verify"]
    assert verify["dynamic"] is False and list(verify["runs"]) == ["1"]


def test_external_data_help_states_the_threshold_the_code_uses(capsys):
    assert EXTERNAL_DATA_THRESHOLD == 1_800_000_000
    assert main(["optimize", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "only when they pass ~1.8 GB" in text and "2 GB" not in text
    assert "~1.8 GB are written with external data" in " ".join((ROOT / "README.md").read_text().split())


def test_lint_errors_carry_the_fusekit_prefix(tmp_path, capsys):
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("fusekit: error: ") for line in err)


def test_output_naming_a_folder_says_so(tmp_path, monkeypatch, capsys):
    model = write(tmp_path, SMALL)
    monkeypatch.chdir(tmp_path)
    for folder in (".", str(tmp_path)):
        assert main(["optimize", str(model), "-o", folder]) == 2
        assert f"-o {folder}: names a folder; give a file name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_make_model_prints_no_warning_on_the_first_run(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_model.py"), "model.onnx"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stdout == "wrote model.onnx\n" and done.stderr == ""


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("name", ["model.onnx", "model.opt.onnx", "model.api.onnx", "model.engine",
                                  "model.engine.json"])
def test_files_the_readme_commands_write_are_ignored_by_git(name):
    assert subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", f"examples/{name}"], cwd=ROOT).returncode == 1
