"""A job's own process: `python -m engine.worker`, job spec as the first line of stdin; or a warm GPU
worker, `python -m engine.worker --serve`, which takes one job spec per line, one after the other.

It writes one JSON event per line to stdout (progress, log, artifact, then done or failed); anything
else — library prints, warnings, tracebacks — goes to stderr, which the parent keeps as the job's log,
and a job's log ends with END_OF_JOB. The parent holds stdin open for the whole run: when it closes (the
bot exited, even by kill -9), the worker exits too, so a dead bot never leaves a training holding the GPU.

A warm worker keeps the last base model loaded (engine.models.warm) and, after a job that ended well, puts
it back as loaded, gives the RNGs the state a fresh process has and answers `ready`. A job that failed
(an exception, CUDA out of memory) or that left the process holding more memory than `--max-rss-gb` ends
it instead, and the next job gets a fresh process; a cancelled job's process is killed by the parent.
"""
from __future__ import annotations

import argparse
import gc
import os
import queue
import random
import sys
import threading
import traceback
from typing import IO

from engine.jobs import resolve
from engine.jobs.context import JobContext, JobFailed, JobSpec
from engine.models import warm

END_OF_JOB = "lorabake-worker: end of job"


def _read_jobs(stdin: IO[str], specs: queue.Queue[str]) -> None:
    """Hands each line of stdin to the main thread; at EOF (the parent closed the pipe or died) the
    process ends, whatever it is doing."""
    for line in stdin:
        specs.put(line)
    os._exit(75)


def _end_log(close: bool) -> None:
    """Ends the job's log before its result goes out, so the log is whole when the job counts as done. A
    one-job process then sends what the interpreter prints while exiting nowhere."""
    sys.stderr.write(END_OF_JOB + "\n")
    sys.stderr.flush()
    if close:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


def _protocol_stream() -> IO[str]:
    """Keeps a private handle on the real stdout for events and points fd 1 at stderr, so that
    nothing a library prints can corrupt the event stream."""
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def run_job(spec: JobSpec, events: IO[str], *, last: bool) -> bool:
    """Runs one job, reporting to `events`; True when it ended done."""
    ctx = JobContext(spec, events)
    try:
        result = resolve(spec.entry)(ctx)
    except JobFailed as exc:
        _end_log(close=False)
        ctx.emit("failed", error=str(exc))
        return False
    except MemoryError:
        _end_log(close=False)
        ctx.emit("failed", error="the worker ran out of memory; try a smaller batch or resolution")
        return False
    except Exception as exc:  # noqa: BLE001 - reported to the member, traceback kept in the job log
        traceback.print_exc()
        _end_log(close=False)
        ctx.emit("failed", error=f"internal error in {spec.kind}: {type(exc).__name__}: {exc}")
        return False
    _end_log(close=last)
    ctx.emit("done", result=result or {})
    return True


def _fresh_state() -> None:
    """Between two jobs of a warm worker: the kept model as loaded, RNGs as a new process has them, the
    memory of the last job given back."""
    warm.reset()
    random.seed()
    if "numpy" in sys.modules:
        import numpy as np

        np.random.seed()
    gc.collect()
    if "torch" in sys.modules:
        import torch

        torch.seed()   # a fresh process's generator starts from a non-deterministic seed too
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _rss_gb() -> float:
    """The process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def serve(specs: queue.Queue[str], events: IO[str], max_rss_gb: float) -> int:
    warm.keep_models()
    while True:
        spec = JobSpec.from_json(specs.get())
        if not run_job(spec, events, last=False):
            return 1
        _fresh_state()
        if max_rss_gb and _rss_gb() > max_rss_gb:
            print(f"lorabake-worker: {_rss_gb():.1f} GB resident after job {spec.job_id}, over {max_rss_gb:g} GB: "
                  "a fresh worker takes the next job", file=sys.stderr, flush=True)
            return 0
        events.write('{"type": "ready"}\n')
        events.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    parser.add_argument("--serve", action="store_true", help="take job specs one per line until stdin closes")
    parser.add_argument("--max-rss-gb", type=float, default=0.0, help="end after a job past this memory (0: never)")
    args = parser.parse_args(argv)
    warm.announce_loads()
    specs: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_jobs, args=(sys.stdin, specs), daemon=True).start()
    events = _protocol_stream()
    if args.serve:
        return serve(specs, events, args.max_rss_gb)
    return 0 if run_job(JobSpec.from_json(specs.get()), events, last=True) else 1


if __name__ == "__main__":
    sys.exit(main())
