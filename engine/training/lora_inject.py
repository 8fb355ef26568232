"""Inject LoRA adapters into a frozen UNet or CLIP text encoder through peft directly.

We do not use `text_encoder.add_adapter` (transformers' PEFT integration): transformers ≥ 5.24 refuses
it with peft < 0.22, and the newest peft on the registry is 0.21.2 (DESIGN §3). `peft.inject_adapter_in_model`
works on any `nn.Module` and gives the same module names that `get_peft_model_state_dict` reports.

LoRA parameters are kept in fp32 even when the frozen base is fp16/bf16: peft's LoRA forward casts the
input to the adapter's dtype and the result back to the base layer's dtype, so mixed dtypes are fine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

ADAPTER_NAME = "default"
UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")


def _inject(
    model: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str]
) -> list[torch.nn.Parameter]:
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha}")
    model.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        # peft matches a target by the end of the module name (`to_out.0` matches `…attn1.to_out.0`).
        target_modules=list(target_modules),
        init_lora_weights=True,  # kaiming A, zero B: the adapter starts as a no-op
        lora_dropout=0.0,
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    params: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if ".lora_" in name:
            if param.dtype != torch.float32:
                param.data = param.data.float()
            param.requires_grad_(True)
            params.append(param)
        else:
            param.requires_grad_(False)
    if not params:
        raise ValueError(f"no module of {type(model).__name__} matched the LoRA targets {list(target_modules)}")
    return params


def add_unet_lora(
    unet: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str] = UNET_TARGET_MODULES
) -> list[torch.nn.Parameter]:
    """Freeze `unet`, inject LoRA into its attention projections, return the (fp32) LoRA parameters."""
    return _inject(unet, rank, alpha, target_modules)


def add_text_encoder_lora(
    text_encoder: torch.nn.Module,
    rank: int,
    alpha: float,
    target_modules: Sequence[str] = TEXT_ENCODER_TARGET_MODULES,
) -> list[torch.nn.Parameter]:
    """Freeze `text_encoder`, inject LoRA into its self-attention projections, return the LoRA parameters."""
    return _inject(text_encoder, rank, alpha, target_modules)


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The injected adapter's weights, keyed `<module path>.lora_A.weight` / `.lora_B.weight` (peft's names)."""
    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
