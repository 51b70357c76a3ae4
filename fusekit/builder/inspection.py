"""``fusekit inspect ENGINE``: the sidecar first, then (only if this machine can load the
engine) the engine itself, through the engine inspector."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fusekit.builder import backend as backends
from fusekit.builder import device, sidecar
from fusekit.builder.capture import make_logger
from fusekit.builder.engine import inspect_layers
from fusekit.builder.layers import EngineLayer
from fusekit.errors import BackendMissingError, InputError


@dataclass
class Inspection:
    engine: Path
    sidecar: dict
    notes: list[str] = field(default_factory=list)
    layers: list[EngineLayer] | None = None  # None: not deserialized

    def to_dict(self) -> dict:
        return {"engine": str(self.engine), "sidecar": self.sidecar, "notes": self.notes,
                "deserialized": self.layers is not None,
                "layers": [layer.to_dict() for layer in self.layers] if self.layers is not None else None}


def inspect_engine(engine: Path) -> Inspection:
    """Read ``engine``'s sidecar, refuse what this machine cannot load, and inspect the rest."""
    engine = Path(engine)
    if not engine.is_file():
        raise InputError(f"{engine}: no such file")
    data = sidecar.read(engine)
    name = data["backend"].get("name")
    try:
        installed = backends.load(name) if name in backends.BACKENDS else None
    except BackendMissingError:
        installed = None
    current = device.current_compute_capability()
    notes = sidecar.check(engine, data, sidecar.file_sha256(engine), installed, current)
    result = Inspection(engine, data, notes)
    if installed is not None and current is not None:
        trt_logger, captured = make_logger(installed.trt)
        result.layers = inspect_layers(installed, trt_logger, engine.read_bytes())
        if result.layers is None:
            result.notes.append(f"{installed.describe()} could not deserialize the engine: "
                                + ("; ".join(captured.errors()) or "no reason given"))
    return result
