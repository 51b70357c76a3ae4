"""fusekit: get ONNX models ready for NVIDIA TensorRT, and prove it."""

from fusekit.errors import FusekitError

__version__ = "0.1.0"
__all__ = ["FusekitError", "__version__"]
