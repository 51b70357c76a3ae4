"""Reuse an engine already built from the same inputs, so CI rebuilds only what changed.

``fusekit build`` records a cache key in the sidecar: the sha256 of everything the engine
depends on (the source model and its external data, fusekit's version and code, the optimize
settings, the profile ranges given, the builder options, the TensorRT backend and its
version, and the versions of the packages that provide passes and plugin specs). The build
report is stored beside the engine (``model.engine.report.json``, the ``--report-json``
form). Before building, :func:`lookup` returns the engine at the output path when its
sidecar has the same key, its bytes match the sidecar and its report is there; anything
else is a miss and the engine is rebuilt. The timing cache is not part of the key: it
changes how long a build takes, not what it makes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import onnx

from fusekit.builder import sidecar
from fusekit.builder.report import BuildReport
from fusekit.errors import InputError

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".report.json"
EXTENSION_GROUPS = ("fusekit.passes", "fusekit.plugins")


def report_path(engine: Path) -> Path:
    return engine.with_name(engine.name + REPORT_SUFFIX)


def cache_key(parts: dict) -> str:
    """The sha256 of ``parts`` (JSON-serializable, keys in any order)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def external_data_digests(model: Path) -> dict[str, str]:
    """File -> sha256 of each external-data file of the model file ``model`` (InputError,
    as loading it would, for a location outside the model's folder)."""
    from fusekit.model_io.load import resolve_external_path

    header = onnx.load(str(model), load_external_data=False)
    base = model.resolve().parent
    files = sorted({resolve_external_path(t, base, str(model)) for t in header.graph.initializer
                    if onnx.external_data_helper.uses_external_data(t)})
    return {path.name: sidecar.file_sha256(path) if path.is_file() else "missing" for path in files}


def build_key(source: Path | onnx.ModelProto, backend, options, given, **settings) -> tuple[str | None, str | None]:
    """The cache key of building ``source`` with ``backend``, the builder ``options``, the
    profile ranges ``given`` and the optimize ``settings`` (optimize, passes, skip, and the
    given pass options ``pass_options``, e.g. plugins),
    and the source's sha256; ``(None, None)`` when the source cannot be read (loading it says why)."""
    from google.protobuf.message import DecodeError

    from fusekit import __version__
    from fusekit.builder.facts import sha256_of

    try:
        source_sha256 = sha256_of(source)
        external = {} if isinstance(source, onnx.ModelProto) else external_data_digests(source)
    except (OSError, ValueError, DecodeError, InputError) as exc:
        log.info("%s: no engine reuse (%s)", source, exc)
        return None, None
    key = cache_key({
        "source": source_sha256, "external_data": external, "fusekit": __version__,
        "optimize": settings["optimize"], "passes": None if settings["passes"] is None else list(settings["passes"]),
        "skip": sorted(settings["skip"]),
        "pass_options": settings["pass_options"],  # as given: a different spelling only misses the cache
        "dynamic": sorted(json.dumps(spec.to_json(), sort_keys=True) for spec in given),
        "options": {"workspace_mib": options.workspace_mib, "opt_level": options.opt_level, "fp16": options.fp16,
                    "bf16": options.bf16, "compute_capabilities": sorted(options.compute_capabilities)},
        "backend": [backend.name, backend.version], "extensions": extension_versions(), "code": own_code_digest()})
    return key, source_sha256


@functools.cache
def own_code_digest() -> str:
    """The sha256 of fusekit's own Python files (core, passes, plugins): an editable install
    or a development build changes code without changing the version."""
    import fusekit
    import fusekit.passes
    import fusekit.plugins

    digest = hashlib.sha256()
    for package in (fusekit, fusekit.passes, fusekit.plugins):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def extension_versions() -> list[tuple[str, str, str]]:
    """(entry-point group, package, version) of every package providing passes or plugin
    specs: upgrading one changes what the pipeline makes."""
    from fusekit import registry

    found = set()
    for group in EXTENSION_GROUPS:
        for package, ep in registry.list_entry_points(group):
            dist = getattr(ep, "dist", None)
            found.add((group, package, dist.version if dist is not None else "?"))
    return sorted(found) + [("env", "FUSEKIT_DISABLE_PLUGIN_AUTOLOAD",
                             os.environ.get("FUSEKIT_DISABLE_PLUGIN_AUTOLOAD", ""))]


def save_report(engine: Path, report: BuildReport) -> Path:
    from fusekit.model_io import atomic_write

    path = report_path(engine)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def lookup(engine: Path, key: str):
    """The :class:`~fusekit.builder.engine.EngineBuild` at ``engine`` if it was built with
    cache key ``key`` and is intact, else None."""
    from fusekit.builder.engine import EngineBuild  # engine saves through this module

    engine = Path(engine)
    if not engine.is_file():
        return None
    try:
        data = sidecar.read(engine)
    except InputError as exc:
        log.info("rebuilding: %s", exc)
        return None
    if data.get("cache_key") != key:
        log.info("rebuilding %s: built from other inputs or options", engine)
        return None
    stored = report_path(engine)
    try:
        report = BuildReport.from_dict(json.loads(stored.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("rebuilding %s: its report %s is missing or unreadable (%s)", engine, stored.name, exc)
        return None
    content = engine.read_bytes()
    if sidecar.sha256(content) != data["engine"].get("sha256"):
        log.info("rebuilding %s: its bytes differ from what its sidecar records", engine)
        return None
    return EngineBuild(memoryview(content), report, data, written=[engine, sidecar.path_of(engine), stored],
                       plugins=list(data.get("plugins") or []), reused=True)
