"""Which TensorRT is installed: ``tensorrt`` (10.x and later) first, else ``tensorrt_rtx``.

``FUSEKIT_TRT_BACKEND=tensorrt_rtx`` (or ``tensorrt``) picks one when both are installed.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType

from fusekit.errors import BackendMissingError, InputError

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "tensorrt_rtx")
ENV_VAR = "FUSEKIT_TRT_BACKEND"
INSTALL_HINT = ('install one: pip install "fusekit[trt-rtx]" (tensorrt_rtx: builds engines on any '
                'machine, no GPU needed) or pip install tensorrt (needs an NVIDIA GPU)')


@dataclass(frozen=True)
class Backend:
    """An imported TensorRT module and what fusekit needs to know about it."""

    name: str  # "tensorrt" or "tensorrt_rtx"
    trt: ModuleType
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def import_module(name: str) -> ModuleType:
    """Import one backend module (the single place fusekit imports TensorRT)."""
    return importlib.import_module(name)


def load(preferred: str | None = None) -> Backend:
    """The TensorRT backend to use, or :class:`BackendMissingError` saying how to install one."""
    preferred = preferred or os.environ.get(ENV_VAR) or None
    if preferred is not None and preferred not in BACKENDS:
        raise InputError(f"{ENV_VAR}={preferred}: expected one of {', '.join(BACKENDS)}")
    candidates = (preferred,) if preferred else BACKENDS
    problems = []
    for name in candidates:
        try:
            module = import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        except Exception as exc:  # a broken install (missing CUDA library, ...) is not a bug in fusekit
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        log.debug("TensorRT backend: %s %s", name, getattr(module, "__version__", "?"))
        return Backend(name, module, str(getattr(module, "__version__", "unknown")))
    wanted = f"{preferred} (chosen by {ENV_VAR})" if preferred else "neither tensorrt nor tensorrt_rtx"
    raise BackendMissingError(f"no TensorRT backend: {wanted} can be imported; {INSTALL_HINT}"
                              + (f" (import errors: {'; '.join(problems)})" if problems else ""))


def installed() -> Backend | None:
    """The backend if one imports, else None (never raises BackendMissingError)."""
    try:
        return load()
    except BackendMissingError:
        return None
