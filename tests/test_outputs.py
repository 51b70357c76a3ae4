"""Every command checks every output path before any work and leaves nothing behind on failure
(issue 15, point 3): fusekit/outputs.py's transaction, through the CLI of each command."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from fusekit import outputs
from fusekit.cli import main
from fusekit.errors import InputError
from tests.test_builder_cli import RELU, write

IDENTITY_RELU = RELU  # has a removable Identity: optimize and lint --fix both write a model


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------- the transaction


def test_reserved_outputs_appear_only_at_commit(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with outputs.OutputTransaction() as txn:
        txn.reserve(a, "--a")
        txn.reserve(b, "--b")
        outputs.atomic_write(a, lambda f: f.write(b"A"))
        assert not a.exists() and txn.readable(a).read_bytes() == b"A"
        outputs.atomic_write(b, lambda f: f.write(b"B"))
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B" and files(tmp_path) == {"a.bin", "b.bin"}


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(143)])
def test_a_failure_leaves_no_output_and_no_temp_file(tmp_path, error):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    b.write_bytes(b"old")
    with pytest.raises(type(error)):
        with outputs.OutputTransaction() as txn:
            txn.reserve(a, "--a")
            txn.reserve(b, "--b")
            outputs.atomic_write(a, lambda f: f.write(b"A"))
            outputs.atomic_write(b, lambda f: f.write(b"B"))
            raise error
    assert files(tmp_path) == {"b.bin"} and b.read_bytes() == b"old"


def test_failure_while_writing_a_file_leaves_no_temp_file(tmp_path):
    def half(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        with outputs.OutputTransaction() as txn:
            txn.reserve(tmp_path / "a.bin", "--a")
            outputs.atomic_write(tmp_path / "a.bin", half)
    assert files(tmp_path) == set()


def test_unreserved_paths_are_written_at_once(tmp_path):
    with outputs.OutputTransaction():
        outputs.atomic_write(tmp_path / "scratch.onnx", lambda f: f.write(b"x"))
        assert (tmp_path / "scratch.onnx").read_bytes() == b"x"


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing" / "out.onnx", "folder {t}/missing does not exist (fusekit never creates folders)"),
    (lambda t: t, "is a folder, not a file"),
])
def test_reserve_refuses_naming_option_and_path(tmp_path, make, message):
    with pytest.raises(InputError) as info:
        outputs.reserve(make(tmp_path), "--report-json")
    assert str(info.value).startswith("--report-json ") and message.format(t=tmp_path) in str(info.value)


def test_two_options_naming_one_file_are_refused(tmp_path):
    with outputs.OutputTransaction() as txn:
        txn.reserve(tmp_path / "r.json", "--output")
        with pytest.raises(InputError, match="--report-json .*r.json: is also the output of --output"):
            txn.reserve(tmp_path / "r.json", "--report-json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_unwritable_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(InputError, match="folder .* is not writable"):
        outputs.reserve(ro / "r.json", "--report-json")


# ---------------------------------------------------------------- every command


def test_optimize_missing_folder_exits_2_before_reading_the_model(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "out.onnx"
    assert main(["optimize", str(tmp_path / "not-even-there.onnx"), "-o", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--output {missing}: folder {missing.parent} does not exist" in err
    assert files(tmp_path) == set()


def test_optimize_failing_after_the_save_leaves_nothing(tmp_path, monkeypatch):
    """A failure after the model is written (here while printing the report) removes it."""
    import fusekit.cli as cli

    model = write(tmp_path, IDENTITY_RELU)

    def broken(report):
        raise RuntimeError("report failed")

    monkeypatch.setattr(cli, "print_report", broken)
    assert main(["optimize", str(model), "-o", str(tmp_path / "out.onnx")]) == 70
    assert files(tmp_path) == {"model.onnx"}


def test_optimize_writes_its_output(tmp_path):
    model = write(tmp_path, IDENTITY_RELU)
    assert main(["optimize", str(model), "-o", str(tmp_path / "out.onnx")]) == 0
    assert files(tmp_path) == {"model.onnx", "out.onnx"}
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["Relu"]


@pytest.mark.parametrize("option", [["-o", "{t}/none/fixed.onnx"], ["--output-dir", "{t}/none"]])
def test_lint_fix_missing_folder_exits_2_and_writes_nothing(tmp_path, capsys, option):
    model = write(tmp_path, IDENTITY_RELU)
    args = [a.format(t=tmp_path) for a in option]
    assert main(["lint", str(model), "--fix", *args]) == 2
    assert "none" in capsys.readouterr().err
    assert files(tmp_path) == {"model.onnx"}


def test_lint_fix_relints_the_fixed_model_before_it_is_renamed(tmp_path, capsys):
    model = write(tmp_path, IDENTITY_RELU)
    fixed = tmp_path / "fixed.onnx"
    assert main(["lint", str(model), "--fix", "-o", str(fixed), "--format", "json", "--exit-zero"]) == 0
    out = capsys.readouterr().out
    assert str(fixed) in out and ".tmp" not in out
    assert files(tmp_path) == {"model.onnx", "fixed.onnx"}
    assert [n.op_type for n in onnx.load(fixed).graph.node] == ["Relu"]


def test_lint_fix_failing_after_the_write_leaves_nothing(tmp_path, monkeypatch):
    from fusekit.lint import command

    model = write(tmp_path, IDENTITY_RELU)

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(command, "render", broken)
    assert main(["lint", str(model), "--fix", "-o", str(tmp_path / "fixed.onnx")]) == 70
    assert files(tmp_path) == {"model.onnx"}


@pytest.mark.parametrize("option", ["--report-json", "--timing-cache", "-o"])
def test_build_checks_every_output_folder_before_building(tmp_path, capsys, option):
    """Exit 2 at once, with no TensorRT needed: the build never starts."""
    model = write(tmp_path, IDENTITY_RELU)
    argv = {"-o": str(tmp_path / "m.engine")}
    argv[option] = str(tmp_path / "ro" / "r.file")
    args = ["build", str(model)] + [x for k, v in argv.items() for x in (k, v)]
    assert main(args) == 2
    err = capsys.readouterr().err
    named = "--output" if option == "-o" else option
    assert f"{named} {tmp_path / 'ro' / 'r.file'}: folder {tmp_path / 'ro'} does not exist" in err
    assert files(tmp_path) == {"model.onnx"}


@pytest.mark.trt
def test_build_failing_after_the_engine_is_written_leaves_neither_engine_nor_sidecar(tmp_path, monkeypatch):
    """The issue's case: the report could not be written after the engine and sidecar were."""
    import fusekit.cli as cli

    model = write(tmp_path, IDENTITY_RELU)

    def broken(path, data):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(cli, "_write_json", broken)
    code = main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--dynamic", "N=1:2:4",
                 "--report-json", str(tmp_path / "r.json")])
    assert code != 0
    assert files(tmp_path) == {"model.onnx"}
