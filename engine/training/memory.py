"""How much GPU memory a training will hold during its steps, told in the plan before it starts.

What stays on the GPU once the steps begin (the trainer makes every latent, and with frozen text encoders
every caption's embedding, before step 1, then drops the VAE and those encoders):
- the UNet's frozen weights, in the training precision (fp16/bf16: 2 bytes, fp32: 4);
- the text encoder(s)' weights, only when they are trained or read every step (shuffled captions);
- the LoRA: fp32 weights and gradients, and the optimizer's state (AdamW 2 fp32 moments, 8-bit AdamW
  2 bytes, Prodigy 4 fp32 buffers);
- activations saved for the backward pass, which grow with batch size × pixels; gradient checkpointing
  keeps only block inputs and recomputes one block at a time;
- an allowance for the CUDA context, cuBLAS/cuDNN workspaces and the allocator's slack.

The per-family figures are bench/vram.py's counts on the published SD1.5 and SDXL-base architectures
(meta device; memory-efficient attention assumed, as torch SDPA and xformers give on a GPU). Base models
fine-tuned from those share their shapes; a model of another size (the toy world's) is not these numbers,
so the plan says which size it assumes. Not yet checked against a GPU's own peak figure.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.training.options import TrainOptions

GIB = 2**30
# CUDA context (~0.3–0.5 GiB), cuBLAS/cuDNN workspaces, the activation gradients alive in the backward
# and the caching allocator's fragmentation: a round allowance, not a measurement.
ALLOWANCE_GIB = 1.0
_OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}


@dataclass(frozen=True)
class FamilySize:
    """bench/vram.py's figures for one family at its native resolution, per image, fp16."""
    resolution: int
    unet_params: int
    text_params: int
    unet_lora_per_rank: int
    text_lora_per_rank: int
    activations_gib: float          # without gradient checkpointing
    checkpointed_gib: float         # with it: block inputs + the largest block recomputed


FAMILY_SIZES = {
    "sd15": FamilySize(512, 859_520_964, 123_060_480, 199_296, 73_728, 2.601, 0.439),
    "sdxl": FamilySize(1024, 2_567_463_684, 816_081_920, 1_451_520, 401_408, 12.293, 0.794),
}


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float       # UNet (+ text encoders when they stay)
    lora_gib: float          # LoRA weights, gradients and optimizer state
    activations_gib: float
    allowance_gib: float
    checkpointed_activations_gib: float   # what the activations would be with gradient checkpointing

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.lora_gib + self.activations_gib + self.allowance_gib


def estimate(options: TrainOptions) -> MemoryEstimate:
    size = FAMILY_SIZES[options.family]
    weight_bytes = 4 if options.mixed_precision == "no" else 2
    # Trained encoders need their weights for the backward; shuffled captions are read afresh every step.
    text_stays = options.train_text_encoder or options.shuffle_captions
    weights = (size.unet_params + (size.text_params if text_stays else 0)) * weight_bytes
    lora_params = size.unet_lora_per_rank * options.network_dim
    if options.train_text_encoder:
        lora_params += size.text_lora_per_rank * options.network_dim
    lora = lora_params * (4 + 4 + _OPTIMIZER_STATE_BYTES.get(options.optimizer, 8))
    # Activations grow with the pixels of a batch; fp32 doubles them.
    scale = options.batch_size * (options.resolution / size.resolution) ** 2 * weight_bytes / 2
    plain, checkpointed = size.activations_gib * scale, size.checkpointed_gib * scale
    return MemoryEstimate(
        weights_gib=weights / GIB, lora_gib=lora / GIB,
        activations_gib=checkpointed if options.gradient_checkpointing else plain,
        allowance_gib=ALLOWANCE_GIB, checkpointed_activations_gib=checkpointed)


def describe(options: TrainOptions) -> str:
    """The plan's sentence: the total, its parts, and the setting that lowers it most when it is off."""
    found = estimate(options)
    family = {"sd15": "SD 1.5", "sdxl": "SDXL"}[options.family]
    encoders = "text encoders" if options.family == "sdxl" else "text encoder"
    stays = f"UNet and {encoders}" if options.train_text_encoder or options.shuffle_captions else "UNet"
    line = (f"GPU memory during the steps: about {found.total_gib:.1f} GB for an {family}-sized base model "
            f"({stays} {found.weights_gib:.1f} GB, LoRA and optimizer {found.lora_gib:.2f} GB, activations "
            f"{found.activations_gib:.1f} GB, CUDA and workspaces ~{found.allowance_gib:.0f} GB).")
    saved = found.activations_gib - found.checkpointed_activations_gib
    if not options.gradient_checkpointing and saved >= 0.5:
        line += f" gradient_checkpointing=true would save about {saved:.1f} GB, at roughly 20–30 % more time per step."
    return line
