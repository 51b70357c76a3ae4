"""The timing cache (``--timing-cache FILE``): loaded before a build, saved after it.

Only ``tensorrt`` has one. tensorrt_rtx's timing cache operations are no-ops (it warns
so), so there fusekit neither reads nor writes the file and says the option has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import InputError
from fusekit.model_io import atomic_write


@dataclass
class TimingCacheUse:
    path: Path
    active: bool  # False on backends without a timing cache
    loaded_bytes: int = 0
    saved_bytes: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return {"path": str(self.path), "active": self.active, "loaded_bytes": self.loaded_bytes,
                "saved_bytes": self.saved_bytes, "note": self.note}


def attach(backend, config, path: Path):
    """Load ``path`` (if it exists) into ``config``; return ``(cache or None, TimingCacheUse)``."""
    if backend.is_rtx or not hasattr(config, "create_timing_cache"):
        return None, TimingCacheUse(path, False, note=f"--timing-cache has no effect with {backend.describe()} "
                                    f"(its timing cache operations are no-ops); {path} was not read or written")
    if not path.parent.is_dir():
        raise InputError(f"--timing-cache {path}: folder {path.parent} does not exist")
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None:
        raise InputError(f"--timing-cache {path}: {backend.describe()} cannot read it (another version's "
                         "cache, or not a timing cache); delete it to start a new one")
    config.set_timing_cache(cache, False)
    return cache, TimingCacheUse(path, True, loaded_bytes=len(data))


def save(cache, use: TimingCacheUse) -> None:
    """Write the (grown) cache back to its file, atomically."""
    if cache is None or not use.active:
        return
    data = bytes(memoryview(cache.serialize()))
    atomic_write(use.path, lambda f: f.write(data))
    use.saved_bytes = len(data)
    grown = use.saved_bytes - use.loaded_bytes
    use.note = (f"timing cache {use.path}: {use.loaded_bytes} bytes loaded, {use.saved_bytes} saved"
                + (f" (+{grown} bytes of new timings)" if use.loaded_bytes and grown > 0 else
                   " (reused as is: no new timings)" if use.loaded_bytes else " (new)"))
