"""A command's output files as one transaction: every path checked before any work, nothing
left behind by a failure.

Every command runs in an :class:`OutputTransaction` (:func:`transactional` on the CLI
command). It first *reserves* each output path, naming the option that chose it: a
missing or unwritable folder, a folder where a file should go, or two options naming
the same file are an :class:`~fusekit.errors.InputError` (exit 2) before the command
reads its model. Folders are never created. Every file is then written by
:func:`atomic_write` to a temp file beside its path; for a reserved path the rename is
deferred to the end of the command, when all outputs are renamed into place together.
On any failure, ``KeyboardInterrupt`` (SIGINT) or SIGTERM, the temp files are deleted
and no output (old or new) is touched. Paths nobody reserved (scratch files under a
temp folder) are renamed at once, as before.
"""

from __future__ import annotations

import contextvars
import functools
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

from fusekit.errors import InputError

_CURRENT: contextvars.ContextVar["OutputTransaction | None"] = contextvars.ContextVar("fusekit_outputs", default=None)
F = TypeVar("F", bound=Callable)


class OutputTransaction:
    """Reserved output paths, their written temp files, and the renames still to do."""

    def __init__(self) -> None:
        self.reserved: dict[Path, str] = {}  # absolute path -> the option that named it
        self.staged: dict[Path, Path] = {}  # absolute path -> its written temp file
        self.committed: list[Path] = []

    def reserve(self, path: str | os.PathLike | None, option: str) -> Path | None:
        """Check that ``path`` (chosen by ``option``) can be written; None and '-' pass through."""
        if path is None or str(path) == "-":
            return None
        path = Path(path)
        key = path.absolute()
        folder = key.parent
        if key in self.reserved and self.reserved[key] != option:
            raise InputError(f"{option} {path}: is also the output of {self.reserved[key]}")
        if not folder.is_dir():
            raise InputError(f"{option} {path}: folder {path.parent} does not exist (fusekit never creates folders)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: folder {path.parent} is not writable")
        if key.is_dir():
            raise InputError(f"{option} {path}: is a folder, not a file")
        self.reserved[key] = option
        return path

    def write(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        """Write ``path`` through a temp file: renamed now unless reserved, else at commit."""
        key = Path(path).absolute()
        tmp = _write_temp(key, write)
        if key not in self.reserved:
            os.replace(tmp, key)
            return
        old = self.staged.pop(key, None)
        if old is not None:
            old.unlink(missing_ok=True)
        self.staged[key] = tmp

    def readable(self, path: Path) -> Path:
        """Where ``path``'s content is now: its temp file if staged and not yet committed."""
        return self.staged.get(Path(path).absolute(), Path(path))

    def commit(self) -> list[Path]:
        """Rename every staged temp file into place (all writes done: renames only)."""
        while self.staged:
            key, tmp = next(iter(self.staged.items()))
            os.replace(tmp, key)
            del self.staged[key]
            self.committed.append(key)
        return self.committed

    def abort(self) -> None:
        """Delete every temp file written; no output is touched."""
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()

    def __enter__(self) -> "OutputTransaction":
        self._token = _CURRENT.set(self)
        self._previous_term = _raise_on_sigterm()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.abort()
            _CURRENT.reset(self._token)
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)


def current() -> OutputTransaction | None:
    """The transaction of the running command, if any."""
    return _CURRENT.get()


def reserve(path: str | os.PathLike | None, option: str) -> Path | None:
    """Reserve ``path`` in the running command's transaction (checked either way)."""
    txn = current()
    if txn is None:
        return OutputTransaction().reserve(path, option)
    return txn.reserve(path, option)


def readable(path: Path) -> Path:
    """Where a file written in this command can be read back before the commit."""
    txn = current()
    return txn.readable(path) if txn is not None else Path(path)


def transactional(command: F) -> F:
    """Run ``command`` in a new :class:`OutputTransaction`."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with OutputTransaction():
            return command(*args, **kwargs)
    return run  # type: ignore[return-value]


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temp file beside ``path`` and rename it over ``path`` (at the end
    of the command when ``path`` is one of its reserved outputs).

    A failure leaves ``path`` as it was. The file gets the usual permissions (umask), not
    the private ones of a temp file. Like ``onnx.save`` it is not fsync'ed: that would double
    the time of a save for protection against power loss only, and an output that power
    loss truncated is refused on load as truncated.
    """
    txn = current()
    if txn is not None:
        txn.write(path, write)
        return
    os.replace(_write_temp(Path(path), write), path)


def _write_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_on_sigterm():
    """SIGTERM raises SystemExit(143) (so temp files are cleaned up); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None  # someone chose a handler: keep it

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return previous


def temp_files(folder: Path) -> Iterator[Path]:
    """fusekit's temp files in ``folder`` (tests: none may be left)."""
    return (p for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))
