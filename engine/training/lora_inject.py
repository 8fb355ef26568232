"""Inject LoRA adapters into a frozen UNet or CLIP text encoder through peft directly, on the modules
lora_modules selects (kohya's set, or LoCon's).

We do not use `text_encoder.add_adapter` (transformers' PEFT integration): transformers ≥ 5.24 refuses
it with peft < 0.22, and the newest peft on the registry is 0.21.2 (DESIGN §3). `peft.inject_adapter_in_model`
works on any `nn.Module` and gives the same module names that `get_peft_model_state_dict` reports. peft's
LoRA on a Conv2d is kohya's: down is a conv with the layer's kernel, stride and padding, up a 1×1 conv.

LoRA parameters are kept in fp32 even when the frozen base is fp16/bf16: peft's LoRA forward casts the
input to the adapter's dtype and the result back to the base layer's dtype, so mixed dtypes are fine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from engine.training.lora_modules import Network, Rank, text_encoder_targets, unet_targets

ADAPTER_NAME = "default"


def add_lora(model: torch.nn.Module, targets: Mapping[str, Rank]) -> list[torch.nn.Parameter]:
    """Freeze `model`, put LoRA on exactly the modules in `targets` (full paths), return the LoRA parameters."""
    if not targets:
        raise ValueError(f"no module of {type(model).__name__} is a LoRA target")
    model.requires_grad_(False)
    ranks = list(targets.values())
    common = max(set(ranks), key=ranks.count)
    # peft matches a pattern against the end of a module path; an escaped full path matches that module only.
    others = {re.escape(path): rank for path, rank in targets.items() if rank != common}
    config = LoraConfig(
        r=common.rank, lora_alpha=common.alpha, target_modules=sorted(targets),
        rank_pattern={p: r.rank for p, r in others.items()}, alpha_pattern={p: r.alpha for p, r in others.items()},
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
    return params


def add_unet_lora(unet: torch.nn.Module, network: Network) -> list[torch.nn.Parameter]:
    """Freeze `unet`, inject the network's LoRA (kohya's module set), return the (fp32) LoRA parameters."""
    return add_lora(unet, unet_targets(unet, network))


def add_text_encoder_lora(text_encoder: torch.nn.Module, network: Network) -> list[torch.nn.Parameter]:
    """Freeze `text_encoder`, inject LoRA into its attention and MLP layers, return the LoRA parameters."""
    return add_lora(text_encoder, text_encoder_targets(text_encoder, network))


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The injected adapter's weights, keyed `<module path>.lora_A.weight` / `.lora_B.weight` (peft's names)."""
    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
