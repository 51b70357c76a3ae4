"""The TensorRT builder: the only part of fusekit that imports ``tensorrt`` / ``tensorrt_rtx``.

Everything here imports TensorRT lazily (through :func:`fusekit.builder.backend.load`), so
the rest of fusekit, and importing this package, works without it. One job per module:

- ``backend``: which TensorRT is installed (``tensorrt`` first, else ``tensorrt_rtx``).
- ``options``: what the user asked of the builder, applied to an ``IBuilderConfig``.
- ``parse``: the ONNX parser, with every error collected (node name, op type, reason).
- ``capture``: the builder's log, kept at VERBOSE for the fused-layer report.
- ``progress``: the builder's progress monitor, forwarded to a callback.
- ``timing_cache``: load/save of the timing cache (a no-op on tensorrt_rtx).
- ``layers``: engine layers from the engine inspector or from the builder's log.
- ``report``: the fused-layer report and the comparison of two builds.
- ``device``: the compute capability of this machine's GPU, if any (no TensorRT import).
- ``sidecar``: the JSON written next to each engine, and the checks made before loading one.
- ``facts``: what the builder knows of the ONNX model (node names, op types, source hash).
- ``engine``: parse + configure + build + report, end to end.
- ``inspection``: what ``fusekit inspect ENGINE`` reports.
"""

from fusekit.builder.options import BuildOptions

__all__ = ["BuildOptions"]
