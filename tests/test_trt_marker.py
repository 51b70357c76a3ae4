"""The ``trt`` marker hook (tests/trt_marker.py): without a TensorRT backend a marked test
is skipped, or fails when FUSEKIT_REQUIRE_TRT=1; unmarked tests are untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Run pytest in a process where neither backend imports (sys.modules[name] = None makes
# `import name` raise ImportError), with only the marker plugin loaded.
RUNNER = ("import sys; sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None; import pytest; "
          "sys.exit(pytest.main(['-p', 'tests.trt_marker', '-p', 'no:cacheprovider', '-rs', '-q', sys.argv[1]]))")
TESTS = '''
import pytest

@pytest.mark.trt
def test_needs_trt():
    pass

def test_plain():
    pass
'''


def run_without_backend(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_it.py").write_text(TESTS)
    (folder / "pytest.ini").write_text("[pytest]\nmarkers = trt: needs a TensorRT backend\n")
    env = {k: v for k, v in os.environ.items() if k != "FUSEKIT_REQUIRE_TRT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if require is not None:
        env["FUSEKIT_REQUIRE_TRT"] = require
    return subprocess.run([sys.executable, "-c", RUNNER, str(folder)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_missing_backend_skips_marked_tests(tmp_path):
    done = run_without_backend(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped in" in done.stdout
    assert "no TensorRT backend" in done.stdout and "fusekit[trt-rtx]" in done.stdout


@pytest.mark.parametrize("require", ["0", ""])
def test_require_off_still_skips(tmp_path, require):
    done = run_without_backend(tmp_path, require)
    assert done.returncode == 0 and "1 passed, 1 skipped" in done.stdout, done.stdout


def test_required_backend_missing_fails_marked_tests(tmp_path):
    done = run_without_backend(tmp_path, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 1 error" in done.stdout  # failed in setup: pytest reports an error
    assert "FUSEKIT_REQUIRE_TRT is set and no TensorRT backend" in done.stdout


@pytest.mark.trt
def test_marked_tests_run_when_a_backend_imports():
    from fusekit.builder import backend as backends

    assert backends.load().name in backends.BACKENDS
