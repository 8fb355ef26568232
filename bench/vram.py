"""Counted, not timed: what a LoRA training step keeps in GPU memory, on the published SD1.5 and SDXL
architectures, built on PyTorch's `meta` device (shapes only: no weights, no memory, no GPU needed).

Measured per family, and written into engine/training/memory.py's table by hand:
- parameters of the UNet and the text encoder(s) (the frozen weights that stay on the GPU);
- LoRA parameters per unit of rank, with lorabake's own injection (engine/training/lora_inject.py);
- activations saved for the backward pass per image at the family's native resolution, in fp16, without
  and with gradient checkpointing (block inputs kept, plus the largest block recomputed in the backward).

How the activations are counted: `torch.autograd.graph.saved_tensors_hooks` sees every tensor the forward
saves; views count once (by their base tensor). The attention-probability matrices (tokens × tokens) that
PyTorch's reference attention saves are left out, because on a GPU the memory-efficient/flash kernels
(torch SDPA, xformers) keep only a log-sum-exp row instead; printed beside the total so the reader sees
what that assumption is worth. Not counted here (memory.py adds a fixed allowance): the CUDA context,
cuBLAS/cuDNN workspaces, the allocator's slack, and the activation gradients alive during the backward.

    .venv/bin/python -m bench.vram
"""
from __future__ import annotations

import json
from typing import Any

import torch

from bench.common import machine, quiet_libraries
from bench.flops import SD15_TEXT, SD15_UNET

# stabilityai/stable-diffusion-xl-base-1.0: unet/, text_encoder/, text_encoder_2/ config.json (values that
# differ from the libraries' defaults).
SDXL_UNET = {"sample_size": 128, "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
             "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816}
SDXL_TEXT = {**SD15_TEXT, "hidden_act": "quick_gelu"}
SDXL_TEXT_2 = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
               "num_hidden_layers": 32, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
FAMILIES: dict[str, dict[str, Any]] = {
    "sd15": {"unet": SD15_UNET, "text": [SD15_TEXT], "resolution": 512, "context": 768},
    "sdxl": {"unet": SDXL_UNET, "text": [SDXL_TEXT, SDXL_TEXT_2], "resolution": 1024, "context": 2048},
}
RANK = 16
GIB = 2**30


def _unet(config: dict[str, Any], checkpointing: bool) -> tuple[Any, int, int]:
    from diffusers import UNet2DConditionModel

    from engine.training.lora_inject import add_unet_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config).to(torch.float16)
    base = sum(p.numel() for p in unet.parameters())
    lora = sum(p.numel() for p in add_unet_lora(unet, RANK, RANK / 2))
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    return unet, base, lora


def _text_params(configs: list[dict[str, Any]]) -> tuple[int, int]:
    """(frozen parameters, LoRA parameters at RANK) of the family's text encoder(s)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.training.lora_inject import add_text_encoder_lora

    base = lora = 0
    for config in configs:
        with torch.device("meta"):
            encoder = CLIPTextModel(CLIPTextConfig(**config))
        base += sum(p.numel() for p in encoder.parameters())
        lora += sum(p.numel() for p in add_text_encoder_lora(encoder, RANK, RANK / 2))
    return base, lora


def saved_activations(family: str, checkpointing: bool) -> dict[str, float]:
    """GiB saved for the backward per image in fp16: kept (attention matrices left out), the attention
    matrices, and the largest single block's own (what a checkpointed backward recomputes at once)."""
    spec = FAMILIES[family]
    unet, _, _ = _unet(spec["unet"], checkpointing)
    held: dict[int, torch.Tensor] = {}
    attention: set[int] = set()
    per_block: dict[int, int] = {}
    before: list[set[int]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        held[id(base)] = base   # held, so an id is never reused while counting
        if base.dim() >= 3 and base.shape[-1] == base.shape[-2] and base.shape[-1] >= 256:
            attention.add(id(base))
        return tensor

    def size(keys: Any) -> int:
        return sum(held[k].numel() * held[k].element_size() for k in keys)

    def enter(module: Any, *_: Any) -> None:
        before.append(set(held))

    def leave(module: Any, *_: Any) -> None:
        new = set(held) - before.pop() - attention
        per_block[id(module)] = size(new)

    # The units diffusers checkpoints one by one: each ResNet block and each transformer block.
    blocks = [m for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
              for m in [*getattr(block, "resnets", []),
                        *(layer for attention in getattr(block, "attentions", None) or []
                          for layer in attention.transformer_blocks)]]
    for module in blocks:
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
    side = spec["resolution"] // 8
    latents = torch.empty(1, 4, side, side, device="meta", dtype=torch.float16)
    context = torch.empty(1, 77, spec["context"], device="meta", dtype=torch.float16)
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.empty(1, 1280, device="meta", dtype=torch.float16),
                                      "time_ids": torch.empty(1, 6, device="meta", dtype=torch.float16)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(latents, torch.zeros(1, dtype=torch.long, device="meta"), encoder_hidden_states=context, **extra)
    return {"kept": size(set(held) - attention) / GIB, "attention_matrices": size(attention) / GIB,
            "largest_block": max(per_block.values(), default=0) / GIB}


def main() -> None:
    quiet_libraries()
    print(machine())
    headline: dict[str, Any] = {}
    for family, spec in FAMILIES.items():
        _, unet_params, unet_lora = _unet(spec["unet"], False)
        text_params, text_lora = _text_params(spec["text"])
        plain = saved_activations(family, checkpointing=False)
        checkpointed = saved_activations(family, checkpointing=True)
        # With checkpointing a block's activations are rebuilt during the backward: its own at the peak.
        peak_checkpointed = checkpointed["kept"] + plain["largest_block"]
        print(f"\n== {family} at {spec['resolution']} px, fp16, per image")
        print(f"  UNet {unet_params / 1e6:.0f} M parameters, text encoder(s) {text_params / 1e6:.0f} M")
        print(f"  LoRA at rank {RANK}: UNet {unet_lora / 1e6:.2f} M, text encoder(s) {text_lora / 1e6:.2f} M "
              f"({unet_lora / RANK:.0f} and {text_lora / RANK:.0f} per unit of rank)")
        print(f"  activations without checkpointing {plain['kept']:.2f} GiB "
              f"(+{plain['attention_matrices']:.2f} GiB of attention matrices with the reference attention)")
        print(f"  with checkpointing {checkpointed['kept']:.2f} GiB kept + {plain['largest_block']:.2f} GiB of the "
              f"largest block recomputed = {peak_checkpointed:.2f} GiB "
              f"({plain['kept'] / peak_checkpointed:.1f}× less)")
        headline[family] = {
            "unet_params": unet_params, "text_params": text_params, "unet_lora_per_rank": unet_lora / RANK,
            "text_lora_per_rank": text_lora / RANK, "activations_gib": round(plain["kept"], 3),
            "checkpointed_gib": round(peak_checkpointed, 3),
            "attention_matrices_gib": round(plain["attention_matrices"], 3)}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
