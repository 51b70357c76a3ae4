"""The models of the benchmark: raw torch exports of examples/zoo.py, and the onnx wheel's
light models (onnx/backend/test/data/light: classic CNNs whose weights are ConstantOfShape
nodes, so a tool that folds constants materializes them).

Zoo exports are made by ``python examples/zoo.py NAME PATH`` in a process of their own and
kept in the models folder; an export older than examples/zoo.py is made again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_SCRIPT = ROOT / "examples" / "zoo.py"
ZOO = ("resnet50", "mobilenet", "convnext", "bert-base", "gpt2")
ZOO_TINY = ("resnet-tiny", "encoder-tiny", "decoder-tiny")


@dataclass(frozen=True)
class Model:
    name: str
    source: str  # "zoo" or "onnx-light"
    light_path: Path | None = None

    @property
    def tiny(self) -> bool:
        return self.name in ZOO_TINY


def light_models() -> dict[str, Model]:
    try:
        import onnx
    except ImportError:
        return {}
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {p.stem: Model(p.stem, "onnx-light", p) for p in sorted(folder.glob("light_*.onnx"))}


def catalog() -> dict[str, Model]:
    """Every model the benchmark knows, by name."""
    found = {name: Model(name, "zoo") for name in (*ZOO, *ZOO_TINY)}
    found.update(light_models())
    return found


def default_names(quick: bool) -> list[str]:
    if quick:
        return list(ZOO_TINY)
    return [*ZOO, *light_models()]


def select(names: list[str] | None, quick: bool) -> list[Model]:
    """The models named (``zoo``, ``tiny``, ``light`` and ``all`` name groups), in order."""
    known = catalog()
    groups = {"zoo": list(ZOO), "tiny": list(ZOO_TINY), "light": list(light_models()),
              "all": [*ZOO, *ZOO_TINY, *light_models()]}
    wanted = []
    for name in names or default_names(quick):
        for item in groups.get(name, [name]):
            if item not in known:
                raise ValueError(f"unknown model {item!r}; known: {', '.join(known)} "
                                 f"(or a group: {', '.join(groups)})")
            if item not in wanted:
                wanted.append(item)
    return [known[n] for n in wanted]


def materialize(model: Model, folder: Path, timeout: float) -> Path:
    """The model's file: the light model itself, or the zoo export (made if missing or stale)."""
    if model.light_path is not None:
        return model.light_path
    path = folder / f"{model.name}.onnx"
    if path.is_file() and path.stat().st_mtime >= ZOO_SCRIPT.stat().st_mtime:
        return path
    tmp = folder / f".{model.name}.onnx.tmp"
    try:
        subprocess.run([sys.executable, str(ZOO_SCRIPT), model.name, str(tmp)], check=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] if exc.stderr else []
        raise RuntimeError(f"exporting {model.name} failed: {' '.join(tail) or exc}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"exporting {model.name} took over {timeout:.0f} s") from None
    os.replace(tmp, path)
    return path
