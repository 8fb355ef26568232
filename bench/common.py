"""What every benchmark prints first (the machine it ran on) and the interleaving they all use."""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from engine.models import BaseModelInfo

T = TypeVar("T")


def machine(*modules: ModuleType) -> str:
    """CPU model, usable CPUs, Python and the versions of `modules` (numbers from another machine or
    library version are not comparable, so they are printed with the numbers)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = ", ".join(f"{m.__name__} {getattr(m, '__version__', '?')}" for m in modules)
    return f"{cpu}; {usable} usable CPUs of {os.cpu_count()}; Python {platform.python_version()}" + \
        (f", {versions}" if versions else "")


def interleaved(sides: Sequence[T], round_no: int) -> list[T]:
    """A B C in even rounds, C B A in odd ones, so that drift of a noisy machine hits every side alike."""
    return list(sides) if round_no % 2 == 0 else list(reversed(sides))


# torch's CPU threads (OpenMP) spin-wait at every barrier: when other processes compete for the cores, a
# 2-thread run on 2 cores was measured 4-6× slower than a 1-thread one, and unevenly so from step to
# step. One thread per run keeps shared machines' numbers steady; both sides always get the same.
THREADS_HELP = "torch CPU threads for every side (default: 1 on the CPU, torch's choice on CUDA; 0 = torch's choice)"


def default_threads(device: str) -> int:
    return 0 if device.startswith("cuda") else 1


def quiet_libraries() -> None:
    """No progress bars from diffusers/transformers (model loads and saves) between the benchmark's lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()   # e.g. the torchvision fallback notice


def base_model(spec: str, scratch: Path, parser: argparse.ArgumentParser) -> BaseModelInfo:
    """--base-model as given, or a tiny SD1.5 written into `scratch`; a bad one stops with its reason."""
    from engine.errors import SetupError
    from engine.models import resolve_base_model

    if not spec:
        from engine.devtools.tiny_models import write_tiny_models

        spec = str(write_tiny_models(scratch / "models").sd15)
    try:
        return resolve_base_model(spec)
    except SetupError as exc:
        parser.error(str(exc))


@contextlib.contextmanager
def tiny_models_scratch() -> Iterator[tuple[Path, Any]]:
    """For benches of whole queues on the tiny models: quiet libraries, the machine printed, a scratch folder
    and the tiny models written into it (both gone afterwards)."""
    from engine.devtools.tiny_models import write_tiny_models

    quiet_libraries()
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch), write_tiny_models(Path(scratch) / "models")
