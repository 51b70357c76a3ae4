"""The builder's log, captured at VERBOSE (the fused-layer report reads it). TensorRT's
errors and warnings also go to Python logging at INFO (``fusekit -v`` shows them): they
reach the user through fusekit's errors and report, not as extra lines."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class LogRecord:
    severity: int  # TensorRT's: 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
    message: str


@dataclass
class CapturedLog:
    """Every message TensorRT logged, in order."""

    records: list[LogRecord] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [r.message for r in self.records if r.severity <= 1]

    def messages(self, max_severity: int = 4) -> list[str]:
        return [r.message for r in self.records if r.severity <= max_severity]




@functools.cache
def _logger_class(trt):
    class CapturingLogger(trt.ILogger):
        def __init__(self, captured: CapturedLog) -> None:
            trt.ILogger.__init__(self)
            self.captured = captured

        def log(self, severity, msg) -> None:  # called by TensorRT; must never raise
            try:
                level = int(severity)
                self.captured.records.append(LogRecord(level, msg))
                if level <= 2:
                    log.info("TensorRT: %s", msg)
            except Exception:  # pragma: no cover - an exception here would cross into C++
                pass

    return CapturingLogger


def make_logger(trt) -> tuple[object, CapturedLog]:
    """A TensorRT ``ILogger`` keeping every message, and the log it fills."""
    captured = CapturedLog()
    return _logger_class(trt)(captured), captured
