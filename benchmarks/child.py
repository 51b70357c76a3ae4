"""Run one benchmark job in its own process: time limit, memory limit, peak RSS of that process.

Peak RSS is the job's own high-water mark, ``VmHWM`` of ``/proc/PID/status``: the job
reports it when it ends, and the parent samples it while the job runs (the last sample
stands for a job that is killed). Not ``ru_maxrss`` from ``wait4`` or ``RUSAGE_CHILDREN``:
on Linux a child's ``ru_maxrss`` starts at the parent's high-water mark (the kernel
keeps the larger of the two across fork and exec), so every job would weigh at least
what the benchmark itself once held. A job that outlives ``timeout`` is killed and
reported as ``timeout``; one whose resident memory passes ``max_rss`` is killed and
reported as ``oom`` (before the kernel's OOM killer picks some other process on a shared
machine). The job writes its result as JSON to a file whose path it is given; its stdout
and stderr go to a log file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OK, FAILED, TIMEOUT, OOM = "ok", "failed", "timeout", "oom"
PEAK_KEY = "_peak_rss"  # how a job reports its own high-water mark
TOOL_ERROR = "ToolError:"  # a job's error raised as ``ToolError``: the tool printed why
_POLL_SECONDS = 0.05


@dataclass
class Outcome:
    """How a job ended, what it cost, and the JSON it wrote (empty if none)."""

    status: str
    seconds: float  # wall time of the whole process, start-up included
    peak_rss: int | None  # bytes
    error: str | None = None
    result: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK


def python_job(script: Path, *args: str | os.PathLike, result: Path, log: Path, timeout: float,
               max_rss: int) -> Outcome:
    """Run ``python SCRIPT ARGS... RESULT`` and read the JSON it writes to RESULT."""
    result.unlink(missing_ok=True)
    argv = [sys.executable, str(script), *map(str, args), str(result)]
    outcome = run(argv, log=log, timeout=timeout, max_rss=max_rss)
    if result.is_file():
        try:
            outcome.result = json.loads(result.read_text())
        except json.JSONDecodeError as exc:
            outcome.status, outcome.error = FAILED, f"unreadable result ({exc})"
        reported = outcome.result.pop(PEAK_KEY, None)
        if reported:
            outcome.peak_rss = max(reported, outcome.peak_rss or 0)
    if outcome.ok and outcome.result.get("error"):
        outcome.status, outcome.error = outcome.result.get("status", FAILED), outcome.result["error"]
        if outcome.error.startswith(TOOL_ERROR):  # the tool's own message is in its output
            outcome.error += f"; last line of its output: {_tail(log)}"
    elif outcome.ok and not outcome.result:
        outcome.status, outcome.error = FAILED, "exited without writing a result: " + _tail(log)
    return outcome


def run(argv: list[str], *, log: Path, timeout: float, max_rss: int) -> Outcome:
    """Run ``argv`` to the end, or kill it at ``timeout`` seconds or ``max_rss`` bytes."""
    start = time.perf_counter()
    with open(log, "wb") as out:
        # Its own group, so its helpers die with it; its own folder as working directory, so
        # files a tool leaves there (Polygraphy's symbolic shape inference writes
        # sym_shape_infer_temp.onnx and external data) stay with the job's log.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log.parent)
    killed_for, peak = None, 0
    while proc.poll() is None:
        rss, hwm = memory(proc.pid)
        peak = max(peak, hwm)
        if time.perf_counter() - start > timeout:
            killed_for = TIMEOUT
        elif rss > max_rss:
            killed_for = OOM
        if killed_for is not None:
            _kill_group(proc.pid)
            proc.wait()
            break
        time.sleep(_POLL_SECONDS)
    seconds = time.perf_counter() - start
    peak = peak or None
    if killed_for == TIMEOUT:
        return Outcome(TIMEOUT, seconds, peak, f"killed after {timeout:g} s")
    if killed_for == OOM:
        return Outcome(OOM, seconds, peak, f"killed at {max_rss / 2**30:.1f} GiB resident")
    code = proc.returncode
    if code == 0:
        return Outcome(OK, seconds, peak)
    if code == -signal.SIGKILL:
        return Outcome(OOM, seconds, peak, "killed by SIGKILL (the kernel's OOM killer?)")
    if code < 0:
        return Outcome(FAILED, seconds, peak, f"crashed ({signal.Signals(-code).name}): {_tail(log)}")
    return Outcome(FAILED, seconds, peak, f"exit code {code}: {_tail(log)}")


def memory(pid: int | str = "self") -> tuple[int, int]:
    """(resident bytes now, resident high-water mark) of a process; zeros if it is gone."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value, _unit = line.split()
                    found[key] = int(value) * 1024  # kB
    except (OSError, ValueError):
        pass
    return found.get("VmRSS:", 0), found.get("VmHWM:", 0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the group this job leads (start_new_session)
    except ProcessLookupError:
        pass


def _tail(log: Path, limit: int = 300) -> str:
    """The last meaningful line of a job's log (usually the exception or the tool's error)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return (lines[-1][:limit] if lines else "no output")


def default_max_rss() -> int:
    """70% of this machine's memory, at most 16 GiB."""
    try:
        with open("/proc/meminfo") as f:
            total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return 8 << 30
    return min(int(total_kib * 1024 * 0.7), 16 << 30)


def job_main(work) -> None:
    """The job side: ``work(args)`` returns the result dict written to the last argument.

    A failure is written as ``{"status": "failed" | "oom", "error": ...}`` so the parent
    reports the tool's own message, not a traceback's last line.
    """
    *args, result = sys.argv[1:]
    try:
        data = work(args)
    except MemoryError as exc:
        data = {"status": OOM, "error": f"MemoryError: {exc}"}
    except Exception as exc:  # any tool error is a result to report, not a crash
        message = " ".join(str(exc).split())[:500]
        data = {"status": FAILED, "error": f"{type(exc).__name__}: {message}"}
    data[PEAK_KEY] = memory()[1]
    Path(result).write_text(json.dumps(data, indent=1))
