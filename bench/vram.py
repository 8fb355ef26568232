"""Counted, not timed: what a LoRA training step keeps in GPU memory, on the published SD1.5 and SDXL
architectures, built on PyTorch's `meta` device (shapes only: no weights, no memory, no GPU needed).

Measured per family, and written into engine/training/memory.py's table by hand:
- parameters of the UNet and the text encoder(s) (the frozen weights that stay on the GPU);
- LoRA modules and parameters per unit of rank by kind, with lorabake's own module choice (lora_modules.py);
- activations saved for the backward pass per image at the family's native resolution, in fp16, without
  and with gradient checkpointing (block inputs kept, plus the largest block recomputed in the backward),
  for each network: attention only, kohya's set, LoCon.

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
from engine.devtools.published import meta_text_encoders, meta_unet
from engine.training.lora_inject import add_unet_lora
from engine.training.lora_modules import Network, Rank, lora_parameter_count, text_encoder_targets, unet_targets
from engine.training.memory import LoraGroup

FAMILIES: dict[str, dict[str, Any]] = {
    "sd15": {"resolution": 512, "context": 768},
    "sdxl": {"resolution": 1024, "context": 2048},
}
RANK = 16
GIB = 2**30


# The networks the table covers, at RANK (LoCon's convolutions at RANK too; the table is per unit of rank).
NETWORKS = {"attention": Network(RANK, RANK / 2, modules="attention"), "kohya": Network(RANK, RANK / 2),
            "locon": Network(RANK, RANK / 2, conv_dim=RANK, conv_alpha=1)}
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def _group(path: str, module: Any) -> str:
    """memory.py's kind of a LoRA module: attention, transformer, resnet, conv (U-Net); attention, mlp."""
    if path.endswith(_ATTENTION):
        return "attention"
    if ".mlp." in path:
        return "mlp"
    if ".attentions." in path:
        return "transformer"
    return "conv" if type(module).__name__ == "Conv2d" and module.kernel_size != (1, 1) else "resnet"


def lora_groups(model: Any, targets: dict[str, Any]) -> dict[str, LoraGroup]:
    """{kind: (modules, LoRA parameters per unit of rank)} of `targets` in `model`."""
    modules = dict(model.named_modules())
    found: dict[str, list[int]] = {}
    for path in targets:
        counts = found.setdefault(_group(path, modules[path]), [0, 0])
        counts[0] += 1
        counts[1] += lora_parameter_count({path: Rank(1, 1.0)}, model)
    return {kind: LoraGroup(n, per_rank) for kind, (n, per_rank) in sorted(found.items())}


def unet_lora_groups(family: str) -> dict[str, LoraGroup]:
    unet = meta_unet(family)
    return lora_groups(unet, unet_targets(unet, NETWORKS["locon"]))


def text_lora_groups(family: str) -> dict[str, LoraGroup]:
    groups: dict[str, LoraGroup] = {}
    for encoder in meta_text_encoders(family):
        for kind, group in lora_groups(encoder, text_encoder_targets(encoder, NETWORKS["kohya"])).items():
            old = groups.get(kind, LoraGroup(0, 0))
            groups[kind] = LoraGroup(old.modules + group.modules, old.per_rank + group.per_rank)
    return groups


def _trained_unet(family: str, network: str, checkpointing: bool) -> Any:
    unet = meta_unet(family, torch.float16)
    add_unet_lora(unet, NETWORKS[network])
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def saved_activations(family: str, checkpointing: bool, network: str = "kohya") -> dict[str, float]:
    """GiB saved for the backward per image in fp16: kept (attention matrices left out), the attention
    matrices, and the largest single block's own (what a checkpointed backward recomputes at once)."""
    spec = FAMILIES[family]
    unet = _trained_unet(family, network, checkpointing)
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
        unet_params = sum(p.numel() for p in meta_unet(family).parameters())
        text_params = sum(p.numel() for e in meta_text_encoders(family) for p in e.parameters())
        unet_groups, text_groups = unet_lora_groups(family), text_lora_groups(family)
        print(f"\n== {family} at {spec['resolution']} px, fp16, per image")
        print(f"  UNet {unet_params / 1e6:.0f} M parameters, text encoder(s) {text_params / 1e6:.0f} M")
        for where, groups in (("UNet", unet_groups), ("text encoder(s)", text_groups)):
            print(f"  LoRA modules of the {where}: " + ", ".join(
                f"{kind} {g.modules} ({g.per_rank:,} parameters per unit of rank)" for kind, g in groups.items()))
        activations: dict[str, float] = {}
        checkpointed_peak: dict[str, float] = {}
        for network in NETWORKS:
            plain = saved_activations(family, checkpointing=False, network=network)
            checkpointed = saved_activations(family, checkpointing=True, network=network)
            # With checkpointing a block's activations are rebuilt during the backward: its own at the peak.
            peak = checkpointed["kept"] + plain["largest_block"]
            activations[network], checkpointed_peak[network] = round(plain["kept"], 3), round(peak, 3)
            print(f"  {network}: activations without checkpointing {plain['kept']:.2f} GiB "
                  f"(+{plain['attention_matrices']:.2f} GiB of attention matrices with the reference attention); "
                  f"with checkpointing {checkpointed['kept']:.2f} kept + {plain['largest_block']:.2f} of the "
                  f"largest block = {peak:.2f} GiB")
        headline[family] = {
            "unet_params": unet_params, "text_params": text_params,
            "unet_lora": {k: [g.modules, g.per_rank] for k, g in unet_groups.items()},
            "text_lora": {k: [g.modules, g.per_rank] for k, g in text_groups.items()},
            "activations_gib": activations, "checkpointed_gib": checkpointed_peak}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
