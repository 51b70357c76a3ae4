"""fusekit: get ONNX models ready for NVIDIA TensorRT, and prove it.

    import fusekit
    model = fusekit.optimize("model.onnx")

The top level is lazy: ``import fusekit`` (or ``import fusekit.pass_infra``, what a
third-party pass needs) loads no API, lint, model I/O or builder module until one of the
names below is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusekit.errors import FusekitError

__all__ = ["FusekitError", "__version__", "build", "compare_builds", "inspect_engine", "lint", "optimize"]

_LAZY = {"build": "fusekit.api", "compare_builds": "fusekit.api", "inspect_engine": "fusekit.api",
         "optimize": "fusekit.api"}

if TYPE_CHECKING:
    from fusekit import lint  # a callable package: fusekit.lint(model) returns the findings
    from fusekit.api import build, compare_builds, inspect_engine, optimize


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one source: the installed metadata (pyproject.toml)
        from importlib.metadata import version

        value = version("fusekit")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "lint":
        value = importlib.import_module("fusekit.lint")
    else:
        raise AttributeError(f"module 'fusekit' has no attribute {name!r}")
    globals()[name] = value
    return value
