"""The JSON sidecar written next to each engine (``model.engine`` -> ``model.engine.json``),
and the checks made with it before an engine is deserialized.

A TensorRT engine only loads in the TensorRT (name and version) that built it, on a GPU
architecture it was built for; deserializing it anywhere else fails with an obscure error
or worse. The sidecar records what the engine needs (schema:
``fusekit/schemas/engine-sidecar.schema.json``)::

    {"schema": "fusekit.engine-sidecar/1",
     "engine": {"file": "model.engine", "bytes": 917868, "sha256": "..."},
     "backend": {"name": "tensorrt_rtx", "version": "1.7.1.116"},
     "compute_capability": {"targets": ["8.0", "8.6", "8.9", "12.0"], "or_later": true,
                            "chosen_by": "tensorrt_rtx default"},
     "precision": "fp32",
     "profiles": [[{"input": "images", "min": [1, 3, 64, 64], "opt": [...], "max": [...]}]],
     "source_model": {"path": "model.onnx", "sha256": "...", "optimized": true},
     "fusekit_version": "0.1.0", "created": "2026-01-01T00:00:00Z", "build_seconds": 0.12,
     "cache_key": "...", "plugins": [{"name": "EfficientNMS_TRT", ...}]}

``cache_key`` is what :mod:`fusekit.builder.reuse` compares before building again;
``plugins`` the TensorRT plugins the engine needs at run time.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from fusekit import __version__
from fusekit.builder.options import cc_key
from fusekit.errors import EngineMismatchError, InputError
from fusekit.model_io import atomic_write

SCHEMA = "fusekit.engine-sidecar/1"
SUFFIX = ".json"


def path_of(engine: Path) -> Path:
    return engine.with_name(engine.name + SUFFIX)


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make(*, engine_file: str, engine_bytes: int, engine_sha256: str, backend: str, version: str,
         compute_capability: dict, precision: str, profile: list[dict], source_path: str | None,
         source_sha256: str, optimized: bool, build_seconds: float, cache_key: str | None = None,
         plugins: list[dict] | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "engine": {"file": engine_file, "bytes": engine_bytes, "sha256": engine_sha256},
        "backend": {"name": backend, "version": version},
        "compute_capability": compute_capability,
        "precision": precision,
        "profiles": [profile] if profile else [],
        "source_model": {"path": source_path, "sha256": source_sha256, "optimized": optimized},
        "fusekit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(build_seconds, 3),
        "cache_key": cache_key,
        "plugins": list(plugins or []),
    }


def write(engine: Path, data: dict) -> Path:
    path = path_of(engine)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def read(engine: Path) -> dict:
    """The sidecar of ``engine``; InputError if it is missing or not fusekit's."""
    path = path_of(engine)
    if not path.is_file():
        raise InputError(f"{engine}: no sidecar {path.name} beside it, so fusekit cannot tell which TensorRT "
                         "and GPU it was built for; rebuild it with fusekit build")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{path}: not a fusekit engine sidecar (expected \"schema\": \"{SCHEMA}\")")
    for key in ("engine", "backend", "compute_capability"):
        if not isinstance(data.get(key), dict):
            raise InputError(f"{path}: missing {key!r}")
    return data


def runs_on(compute_capability: dict, cc: str) -> bool:
    """Whether an engine built for ``compute_capability`` (the sidecar's) runs on GPU ``cc``."""
    targets = [str(t) for t in compute_capability.get("targets") or []]
    if not targets:
        return True  # unknown targets: nothing to refuse on
    if cc in targets:
        return True
    return bool(compute_capability.get("or_later")) and cc_key(cc) > max(cc_key(t) for t in targets)


def check(engine: Path, data: dict, engine_sha256: str, installed, current_cc: str | None) -> list[str]:
    """Refuse (EngineMismatchError) an engine this machine cannot load; return notes otherwise.

    ``installed`` is the backend of the sidecar's name if importable here (else None),
    ``current_cc`` this machine's GPU (None: no GPU).
    """
    notes = []
    recorded = data["engine"].get("sha256")
    if recorded and recorded != engine_sha256:
        raise EngineMismatchError(f"{engine}: its sidecar describes another engine (sha256 differs: the engine "
                                  "was replaced or the sidecar copied); rebuild it with fusekit build")
    name, version = data["backend"].get("name"), data["backend"].get("version")
    built_with = f"{name} {version}"
    if installed is None:
        notes.append(f"{name} is not installed here: the engine cannot be loaded on this machine")
    elif installed.version != version:
        raise EngineMismatchError(f"{engine}: built with {built_with}, this machine has {installed.describe()}; "
                                  f"an engine only loads in the TensorRT version that built it: rebuild it here "
                                  f"with fusekit build, or install {name}=={version}")
    targets = data["compute_capability"]
    if current_cc is None:
        notes.append("no NVIDIA GPU here: the engine was not deserialized; what follows is its sidecar")
    elif not runs_on(targets, current_cc):
        wanted = ", ".join(targets.get("targets") or []) + (" or later" if targets.get("or_later") else "")
        raise EngineMismatchError(f"{engine}: built for compute capability {wanted}; this GPU is {current_cc}: "
                                  f"rebuild it for this GPU (fusekit build --compute-capability {current_cc} "
                                  "with tensorrt_rtx, or fusekit build on this machine)")
    return notes
