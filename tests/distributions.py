"""Test-time distributions: make a package's entry points visible without pip.

A ``*.dist-info`` folder (METADATA + entry_points.txt) on ``sys.path`` is all
``importlib.metadata`` needs, so tests can install third-party passes for the
duration of one test, exactly as pip would register them.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE_PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "fusekit-example-pass"


def make_distribution(root: Path, name: str, entry_points: dict[str, str], sources: dict[str, str] | None = None,
                      group: str = "fusekit.passes") -> Path:
    """Write a dist-info for ``name`` (and optional module sources) under ``root``; return root."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = [f"[{group}]"] + [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, text in (sources or {}).items():
        (root / f"{module}.py").write_text(text)
    return root


def activate(monkeypatch, *paths: Path) -> None:
    """Put ``paths`` on sys.path (and PYTHONPATH for subprocesses) for one test."""
    for path in paths:
        monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", ":".join(str(p) for p in paths) + ":" + ":".join(sys.path))


def example_distribution(root: Path) -> list[Path]:
    """The example third-party pass package of examples/, as a test-time distribution."""
    make_distribution(root, "fusekit-example-pass",
                      {"cancel-double-neg": "fusekit_example_pass:CancelDoubleNegPass"})
    return [root, EXAMPLE_PACKAGE]
