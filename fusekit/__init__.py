"""fusekit: get ONNX models ready for NVIDIA TensorRT, and prove it.

    import fusekit
    model = fusekit.optimize("model.onnx")
"""

from fusekit.api import build, compare_builds, inspect_engine, optimize
from fusekit.errors import FusekitError
from fusekit import lint  # a callable package: fusekit.lint(model) returns the findings

__version__ = "0.1.0"
__all__ = ["FusekitError", "__version__", "build", "compare_builds", "inspect_engine", "lint", "optimize"]
