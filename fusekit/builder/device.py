"""This machine's NVIDIA GPU, if any: its compute capability (no TensorRT import).

Asked of ``nvidia-smi`` (it ships with the driver): no driver, no GPU. The result is
cached per process.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess

log = logging.getLogger(__name__)


@functools.cache
def current_compute_capability() -> str | None:
    """``"8.6"`` for the first GPU, or None when there is no usable NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        return None
    try:
        major, minor = lines[0].split(".")
        return f"{int(major)}.{int(minor)}"
    except ValueError:
        log.debug("nvidia-smi: unexpected compute_cap %r", lines[0])
        return None
