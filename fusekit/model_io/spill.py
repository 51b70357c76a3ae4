"""Keep weights that passes compute out of memory: spill them to a scratch file.

Loaded weights are memory maps of the model's files and cost no memory until read. A
pass that rewrites weights (fold-batchnorm, fold-constants on a transposed weight)
creates NumPy arrays instead, and on a CNN whose every Conv has a BatchNormalization
they add up to the model's size. Passes call :meth:`WeightSpill.relieve` between
rewrites (through ``PassContext.wrote_weights``); once the process's resident memory
is over the budget (the model's size, at least 64 MiB), the largest such arrays (of at
least ``min_bytes``) are written to a scratch file, until memory is back under it, and
swapped for memory maps of their bytes (read back on use, streamed from the file by
:func:`~fusekit.model_io.save_graph`). Under the budget nothing is written: spilling
costs a copy of the weights. The scratch
folder goes when the :class:`WeightSpill` does.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import held_values
from fusekit.model_io.values import FileSliceValues, _set_location, array_header, byte_view, plain_array

SPILL_MIN_BYTES = 64 << 10
MIN_BUDGET_BYTES = 64 << 20
# After a spill, the next one waits until resident memory grew this much again.
RELIEVE_STEP_BYTES = 16 << 20
_ALIGN = 4096  # page-aligned, so each spilled weight maps on its own pages


class WeightSpill:
    """Moves computed weights of a graph to a scratch file when memory is over budget."""

    min_bytes = SPILL_MIN_BYTES
    step = RELIEVE_STEP_BYTES

    def __init__(self, budget: int | None = None) -> None:
        self.budget = None if budget is None else max(budget, MIN_BUDGET_BYTES)
        self.spilled_bytes = 0
        self._mark = 0
        self._folder: tempfile.TemporaryDirectory | None = None
        self._path: Path | None = None

    def relieve(self, graph: gs.Graph) -> None:
        """Over the budget (and ``step`` above the last spill), spill the largest computed
        weights until ``step`` under it (cheap when under: one read of /proc; call it often)."""
        if self.budget is None:
            return
        now = _resident_bytes()
        if now >= self.budget and now - self._mark >= self.step:
            self.spill(graph, now - self.budget + self.step)

    def spill(self, graph: gs.Graph, need: int | None = None) -> int:
        """Spill the graph's in-memory weights of ``min_bytes`` or more, largest first, until
        ``need`` bytes went (all of them when None); return how many."""
        found = sorted({id(t): t for node in graph.nodes for t in node.inputs if self._spillable(t)}.values(),
                       key=lambda t: -held_values(t).nbytes)
        moved = freed = 0
        if found:
            with open(self._scratch(), "ab") as out:
                for tensor in found:
                    if need is not None and freed >= need:
                        break
                    freed += self._spill(tensor, out)
                    moved += 1
            _return_freed_memory()
        self._mark = _resident_bytes()
        return moved

    def _spillable(self, tensor: gs.Tensor) -> bool:
        return (isinstance(tensor, gs.Constant) and isinstance(held_values(tensor), np.ndarray)
                and held_values(tensor).nbytes >= self.min_bytes and plain_array(tensor) is not None)

    def _spill(self, tensor: gs.Constant, out) -> int:
        array = plain_array(tensor)
        out.write(b"\0" * (-out.tell() % _ALIGN))
        offset = out.tell()
        out.write(byte_view(array))
        proto = array_header(tensor.name, array)
        _set_location(proto, str(self._path), offset, array.nbytes)
        tensor.values = FileSliceValues(proto, self._path)  # exported inline, like the model's own weights
        self.spilled_bytes += array.nbytes
        return array.nbytes

    def _scratch(self) -> Path:
        if self._path is None:
            self._folder = tempfile.TemporaryDirectory(prefix="fusekit-spill-")
            self._path = Path(self._folder.name) / "weights.bin"
        return self._path


def _return_freed_memory() -> None:
    """Give the arrays just freed back to the system: glibc keeps freed blocks of a few
    MiB (below its adaptive mmap threshold) in its heap, where they still count as ours."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    """This process's resident memory (0 where /proc is missing: never over budget). Passes
    ask after every rewrite, so /proc/self/statm stays open (reopened in a forked child,
    whose /proc/self is another file)."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_statm: tuple[int, int] | None = None  # (pid, fd of /proc/self/statm)
