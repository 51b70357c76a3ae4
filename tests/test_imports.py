"""Light imports: ``fusekit --version`` and ``--help`` load no onnx, and the pass contract
(``fusekit.pass_infra``, what a third-party pass imports) loads no API, lint, model I/O
or builder module. Each is checked in a fresh interpreter."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import fusekit

HEAVY = ("onnx", "onnx_graphsurgeon", "onnxruntime", "ml_dtypes", "numpy")
CORE = ("fusekit.api", "fusekit.lint", "fusekit.model_io", "fusekit.builder")


def loaded_after(code: str) -> tuple[list[str], str]:
    """The modules loaded when ``code`` has run (even if it exits), and what it printed."""
    script = ("import atexit, json, sys\n"
              "atexit.register(lambda: print('MODULES=' + json.dumps(sorted(sys.modules))))\n" + code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES="))
    return json.loads(line[len("MODULES="):]), done.stdout


def top_level(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m in names or m.startswith(tuple(n + "." for n in names))]


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_import_onnx(flag):
    modules, out = loaded_after(f"import sys; sys.argv = ['fusekit', {flag!r}]\n"
                                "import runpy; runpy.run_module('fusekit', run_name='__main__')")
    assert ("fusekit " + fusekit.__version__ in out) if flag == "--version" else "optimize" in out
    assert top_level(modules, HEAVY) == []
    assert top_level(modules, CORE) == []


def test_the_pass_contract_loads_no_api_lint_model_io_or_builder():
    modules, _ = loaded_after("import fusekit.pass_infra")
    assert top_level(modules, CORE) == []
    assert "fusekit.pass_infra" in modules


def test_top_level_names_load_on_use():
    modules, _ = loaded_after("import fusekit; fusekit.FusekitError")
    assert top_level(modules, CORE) == []
    import fusekit.api

    assert fusekit.optimize is fusekit.api.optimize and fusekit.build is fusekit.api.build
    assert callable(fusekit.lint)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fusekit.nope  # noqa: B018


def test_version_comes_from_the_installed_metadata():
    assert fusekit.__version__ == importlib.metadata.version("fusekit")
