"""Real architectures from examples/zoo.py, exported once per test process and shared.

    from tests.zoo_models import zoo_model
    path = zoo_model("resnet-tiny")   # pytest.skip if torch is missing
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_CACHE = Path(tempfile.mkdtemp(prefix="fusekit-zoo-"))


@functools.cache
def zoo_model(name: str) -> Path:
    """Path of the raw export of ``name`` (see examples/zoo.py for the names)."""
    pytest.importorskip("torch")
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import zoo

    path = _CACHE / f"{name}.onnx"
    zoo.export(name, str(path))
    return path
