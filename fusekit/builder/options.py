"""What the user asked of the builder (:class:`BuildOptions`), applied to an ``IBuilderConfig``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import InputError, TensorRTError

OPT_LEVELS = range(0, 6)  # TensorRT's builder optimization levels; out-of-range values are clamped silently


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings; ``None`` leaves TensorRT's default.

    Attributes:
        workspace_mib: workspace memory-pool limit in MiB.
        opt_level: builder optimization level, 0 (fastest build) to 5 (most tactics).
        fp16, bf16: the model is converted to that type first (the convert-precision
            pass; :func:`fusekit.api.build` does it); networks are strongly typed on every
            backend, so no builder flag is set: the graph's types decide.
        timing_cache: file to load the timing cache from and save it to (``tensorrt``;
            tensorrt_rtx has no timing cache, fusekit says so).
        compute_capabilities: target GPU architectures such as ``"8.6"`` (tensorrt_rtx;
            ``tensorrt`` builds for the GPU it runs on).
    """

    workspace_mib: int | None = None
    opt_level: int | None = None
    fp16: bool = False
    bf16: bool = False
    timing_cache: Path | None = None
    compute_capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise InputError(f"--workspace {self.workspace_mib}: expected a size in MiB above 0")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise InputError(f"--opt-level {self.opt_level}: expected {OPT_LEVELS.start}..{OPT_LEVELS.stop - 1}")
        object.__setattr__(self, "compute_capabilities",
                           tuple(dict.fromkeys(normalize_cc(c) for c in self.compute_capabilities)))
        if self.fp16 and self.bf16:
            raise InputError("--fp16 and --bf16: choose one type to convert the model to")



def normalize_cc(text: str) -> str:
    """``"8.6"``, ``"86"``, ``"sm86"``, ``"SM_86"`` -> ``"8.6"``; ``"12.0"``/``"120"`` -> ``"12.0"``."""
    t = text.strip().lower().removeprefix("sm").removeprefix("_")
    match = re.fullmatch(r"(\d+)\.(\d)", t) or re.fullmatch(r"(\d+)(\d)", t)
    if not match:
        raise InputError(f"--compute-capability {text!r}: expected MAJOR.MINOR, e.g. 8.6")
    return f"{int(match.group(1))}.{match.group(2)}"


def cc_key(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


def apply(backend, builder, network, config, options: BuildOptions,
          shapes: dict[str, tuple[list[int], list[int], list[int]]]) -> None:
    """Configure ``config`` for ``options`` and the optimization profile ``shapes``."""
    check(backend, options)
    trt = backend.trt
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the Layers record of the log
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.compute_capabilities:
        config.num_compute_capabilities = len(options.compute_capabilities)
        for i, cc in enumerate(options.compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
    _add_profile(trt, builder, network, config, shapes)


def check(backend, options: BuildOptions) -> None:
    """Refuse options ``backend`` cannot honour (before any time is spent on the model)."""
    trt = backend.trt
    if options.compute_capabilities:
        if not hasattr(trt.IBuilderConfig, "set_compute_capability"):
            raise InputError(f"--compute-capability: {backend.describe()} builds for the GPU it runs on; "
                             "choosing target architectures needs tensorrt_rtx")
        known = supported_ccs(backend)
        for cc in options.compute_capabilities:
            if cc not in known:
                raise InputError(f"--compute-capability {cc}: {backend.describe()} targets {', '.join(known)}")


def supported_ccs(backend) -> list[str]:
    """The compute capabilities ``backend`` can target (``"8.6"``, ...), if it can choose."""
    members = getattr(getattr(backend.trt, "ComputeCapability", None), "__members__", {})
    found = []
    for name in members:
        match = re.fullmatch(r"SM(\d+)(\d)", name)
        if match:
            found.append(f"{int(match.group(1))}.{match.group(2)}")
    return sorted(found, key=cc_key)


def _add_profile(trt, builder, network, config, shapes) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if not any(-1 in tuple(t.shape) for t in inputs):
        return
    profile = builder.create_optimization_profile()
    for tensor in inputs:
        if tensor.name not in shapes:
            raise TensorRTError(f"network input {tensor.name!r} has no profile shapes (fusekit bug or "
                                "an input the ONNX parser added)")
        if tensor.is_shape_tensor:
            raise TensorRTError(f"input {tensor.name!r} is a shape tensor (its values set shapes); fusekit "
                                "does not yet give value ranges for shape-tensor inputs")
        lo, opt, hi = shapes[tensor.name]
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
