"""Job kinds whose timing the tests control, plugged in through LORABAKE_JOB_PLUGINS=tests.jobkinds.
They run in the real worker process, through the real scheduler; only what they do is test-made."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from engine.jobs import JobKind
from engine.jobs.context import JobContext, JobFailed

JOB_KINDS = [
    JobKind("hold", "Held job", "gpu", "tests.jobkinds:hold", needs_project=False),
    JobKind("hold_cpu", "Held CPU job", "cpu", "tests.jobkinds:hold", needs_project=False),
    JobKind("quick", "Quick job", "gpu", "tests.jobkinds:quick", needs_project=False),
    JobKind("whoami", "Which process", "gpu", "tests.jobkinds:whoami", needs_project=False),
    JobKind("slow_exit", "Slow to exit", "gpu", "tests.jobkinds:slow_exit", needs_project=False),
    JobKind("artifact", "File maker", "cpu", "tests.jobkinds:artifact"),
    JobKind("crash", "Crashing job", "gpu", "tests.jobkinds:crash", needs_project=False),
    JobKind("fail", "Failing job", "gpu", "tests.jobkinds:fail", needs_project=False),
    JobKind("once", "Not resumable", "gpu", "tests.jobkinds:hold", resumable=False, needs_project=False),
]


def hold(ctx: JobContext) -> dict[str, Any]:
    """Reports that it started, then waits until the file named by params['gate'] exists."""
    gate = Path(ctx.params["gate"])
    ctx.progress(1, 2, "holding", pid=os.getpid())
    Path(f"{gate}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + float(ctx.params.get("timeout", 60))
    while not gate.exists():
        if time.monotonic() > deadline:
            raise JobFailed("gate never opened")
        time.sleep(0.02)
    ctx.progress(2, 2, "released")
    return {"released": True, "attempt": ctx.spec.attempt}


def slow_exit(ctx: JobContext) -> dict[str, Any]:
    """Reports its result, then takes a while to exit (as a worker tearing torch down does)."""
    import atexit

    atexit.register(time.sleep, float(ctx.params.get("exit_s", 1.5)))
    return {"pid": os.getpid()}


_RUNS = 0


def whoami(ctx: JobContext) -> dict[str, Any]:
    """The process it ran in, how many jobs that process has run, and the torch seed it was handed; then it
    seeds torch for itself, as a training does (the next job must not inherit that)."""
    import torch

    global _RUNS
    _RUNS += 1
    seen = torch.initial_seed()
    torch.manual_seed(1234)
    return {"pid": os.getpid(), "runs": _RUNS, "torch_seed_seen": seen}


def quick(ctx: JobContext) -> dict[str, Any]:
    print("library noise on stdout must not break the event stream")
    ctx.log("quick job ran")
    return {"n": ctx.params.get("n", 0)}


def artifact(ctx: JobContext) -> dict[str, Any]:
    path = ctx.project_dir / "output" / "file.bin"
    path.write_bytes(os.urandom(int(ctx.params.get("size", 1024))))
    ctx.artifact("lora", path)
    return {}


def crash(ctx: JobContext) -> dict[str, Any]:
    import sys

    print("about to crash: last words", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def fail(ctx: JobContext) -> dict[str, Any]:
    raise JobFailed("CUDA ran out of memory: lower the batch size or turn on gradient checkpointing")
