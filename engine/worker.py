"""A job's own process: `python -m engine.worker`, job spec as the first line of stdin.

It writes one JSON event per line to stdout (progress, log, artifact, then done or failed); anything
else — library prints, warnings, tracebacks — goes to stderr, which the parent keeps as the job's log.
The parent holds stdin open for the whole run: when it closes (the bot exited, even by kill -9), the
worker exits too, so a dead bot never leaves a training holding the GPU.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

from engine.jobs import resolve
from engine.jobs.context import JobContext, JobFailed, JobSpec


def _exit_when_parent_goes(stdin) -> None:
    stdin.read()  # returns at EOF: the parent closed the pipe or died
    os._exit(75)


def _close_log() -> None:
    """Ends the job's log before its result goes out, so the log is whole when the job counts as done;
    what the interpreter prints while exiting goes nowhere."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _protocol_stream():
    """Keeps a private handle on the real stdout for events and points fd 1 at stderr, so that
    nothing a library prints can corrupt the event stream."""
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def main() -> int:
    stdin = sys.stdin
    spec = JobSpec.from_json(stdin.readline())
    threading.Thread(target=_exit_when_parent_goes, args=(stdin,), daemon=True).start()
    ctx = JobContext(spec, _protocol_stream())
    try:
        result = resolve(spec.entry)(ctx)
    except JobFailed as exc:
        ctx.emit("failed", error=str(exc))
        return 1
    except MemoryError:
        ctx.emit("failed", error="the worker ran out of memory; try a smaller batch or resolution")
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the member, traceback kept in the job log
        traceback.print_exc()
        ctx.emit("failed", error=f"internal error in {spec.kind}: {type(exc).__name__}: {exc}")
        return 1
    _close_log()
    ctx.emit("done", result=result or {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
