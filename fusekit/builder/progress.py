"""The builder's progress monitor (``IProgressMonitor``), forwarded to a plain callback.

TensorRT reports nested phases ("Building engine" > "Cloning network graph" > ...), each
with a number of steps. The callback gets :class:`ProgressEvent` values and never sees
TensorRT; an exception it raises cancels the build and is re-raised after it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal


@dataclass(frozen=True)
class ProgressEvent:
    kind: Literal["start", "step", "finish"]
    phase: str
    parent: str | None = None
    steps: int = 0  # for "start": how many steps the phase has
    step: int = 0  # for "step": the step just completed (0-based)


ProgressCallback = Callable[[ProgressEvent], None]


@functools.cache
def _monitor_class(trt):
    class Monitor(trt.IProgressMonitor):
        def __init__(self, callback: ProgressCallback) -> None:
            trt.IProgressMonitor.__init__(self)
            self.callback = callback
            self.error: BaseException | None = None

        def _send(self, event: ProgressEvent) -> bool:
            if self.error is not None:
                return False
            try:
                self.callback(event)
            except BaseException as exc:  # KeyboardInterrupt included: cancel the build
                self.error = exc
                return False
            return True

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            self._send(ProgressEvent("start", phase_name, parent_phase, int(num_steps)))

        def step_complete(self, phase_name, step) -> bool:
            return self._send(ProgressEvent("step", phase_name, step=int(step)))

        def phase_finish(self, phase_name) -> None:
            self._send(ProgressEvent("finish", phase_name))

    return Monitor


def make_monitor(trt, callback: ProgressCallback):
    """An ``IProgressMonitor`` forwarding to ``callback``; its ``error`` holds what the callback raised."""
    return _monitor_class(trt)(callback)
