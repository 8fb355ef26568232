"""The kinds of job the engine can run. Each kind names the function a worker process runs
(`module:function`), its lane, and whether re-running it after an interruption is safe.

Extra kinds can be plugged in with LORABAKE_JOB_PLUGINS=module[,module…]; each module exposes
`JOB_KINDS: list[JobKind]`. The test-suite uses this for jobs whose timing it controls."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Literal

from engine.errors import Invalid

Lane = Literal["gpu", "cpu"]
PLUGINS_ENV = "LORABAKE_JOB_PLUGINS"


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    lane: Lane
    entry: str                  # "package.module:function", run inside the worker process
    priority: int = 0           # short jobs get 1 so they do not wait behind long trainings
    resumable: bool = True      # safe to start again after the process died mid-run
    needs_project: bool = True
    # "module:function" run in the engine process when the job is done: async (db, job_row, result)
    # → the result to keep. It commits to the database what the worker could only write to files.
    on_done: str | None = None
    # A CPU-lane job that a cluster's idle GPU node runs faster: sent there when the GPU lane leaves one free.
    gpu_when_free: bool = False


def tagger_lane() -> Lane:
    """Tagging shares the GPU lane only when onnxruntime can use CUDA; on CPU it runs beside training."""
    import onnxruntime

    return "gpu" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def builtin_kinds() -> list[JobKind]:
    return [
        JobKind("check", "System check", "gpu", "engine.jobs.check:run", priority=1, needs_project=False),
        JobKind("tag", "Tagging", tagger_lane(), "engine.jobs.tag:run", priority=1,
                on_done="engine.dataset:store_tag_result", gpu_when_free=True),
        # Resumable: a re-run renders only the pictures that are missing.
        JobKind("reg", "Reg images", "gpu", "engine.jobs.reg:run", on_done="engine.reg.store:store_reg_result"),
        # Resumable: a re-run continues from the last saved epoch.
        JobKind("train", "Training", "gpu", "engine.jobs.train:run"),
        JobKind("samples", "Sample grids", "gpu", "engine.jobs.samples:run"),
    ]


def resolve(entry: str):
    module_name, attribute = entry.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def load_kinds(env: dict[str, str] | None = None) -> dict[str, JobKind]:
    env = dict(os.environ) if env is None else env
    kinds = {kind.name: kind for kind in builtin_kinds()}
    for module_name in filter(None, (name.strip() for name in env.get(PLUGINS_ENV, "").split(","))):
        module = importlib.import_module(module_name)
        for kind in module.JOB_KINDS:
            kinds[kind.name] = kind
    return kinds


def require_kind(kinds: dict[str, JobKind], name: str) -> JobKind:
    try:
        return kinds[name]
    except KeyError:
        raise Invalid(f"unknown job kind {name!r} (known: {', '.join(sorted(kinds))})") from None
