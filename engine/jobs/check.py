"""The "system check" job: what the GPU box can do, run in the same kind of worker process as a
training, so it reports what a training would really get (CUDA or not, VRAM, tagger providers)."""
from __future__ import annotations

import platform
from typing import Any

from engine.jobs.context import JobContext


def run(ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0, 3, "loading torch")
    import torch

    result: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    result["cuda"] = torch.cuda.is_available()
    if result["cuda"]:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        result["device"] = props.name
        result["vram_total_gib"] = round(total / 2**30, 1)
        result["vram_free_gib"] = round(free / 2**30, 1)
        result["bf16"] = torch.cuda.is_bf16_supported()
    else:
        result["device"] = "CPU (no CUDA device visible to torch: training will be very slow)"
    ctx.progress(1, 3, "loading onnxruntime")
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    result["onnxruntime"] = onnxruntime.__version__
    cuda = "CUDAExecutionProvider" in providers
    result["tagger_provider"] = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    ctx.progress(2, 3, "loading diffusers")
    import diffusers

    result["diffusers"] = diffusers.__version__
    ctx.progress(3, 3, "done")
    return result
