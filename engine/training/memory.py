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
class LoraGroup:
    """Modules of one kind that a network may put LoRA on, and their LoRA parameters per unit of rank."""
    modules: int
    per_rank: int


# The kinds of LoRA module (bench/vram.py sorts kohya's and LoCon's modules into them) and which a network
# trains: "attention" the q/k/v/out projections, "transformer" the rest of the transformer blocks (proj_in,
# proj_out, feed-forward), "mlp" the text encoders' MLPs, "resnet" LoCon's time-embedding projections and
# 1×1 shortcuts (at the network's dim), "conv" LoCon's 3×3 convolutions (at conv_dim).
UNET_GROUPS = {"attention": ("attention",), "kohya": ("attention", "transformer"),
               "locon": ("attention", "transformer", "resnet", "conv")}
TEXT_GROUPS = {"attention": ("attention",), "kohya": ("attention", "mlp"), "locon": ("attention", "mlp")}


@dataclass(frozen=True)
class FamilySize:
    """bench/vram.py's figures for one family at its native resolution, per image, fp16; activations per
    network kind (a LoRA keeps its module's input for the backward, so more modules keep more)."""
    resolution: int
    unet_params: int
    text_params: int
    unet_lora: dict[str, LoraGroup]
    text_lora: dict[str, LoraGroup]
    activations_gib: dict[str, float]          # without gradient checkpointing
    checkpointed_gib: dict[str, float]         # with it: block inputs + the largest block recomputed


FAMILY_SIZES = {
    "sd15": FamilySize(
        512, 859_520_964, 123_060_480,
        unet_lora={"attention": LoraGroup(128, 199_296), "transformer": LoraGroup(64, 224_640),
                   "resnet": LoraGroup(36, 82_880), "conv": LoraGroup(50, 544_000)},
        text_lora={"attention": LoraGroup(48, 73_728), "mlp": LoraGroup(24, 92_160)},
        activations_gib={"attention": 2.601, "kohya": 2.925, "locon": 3.184},
        checkpointed_gib={"attention": 0.439, "kohya": 0.556, "locon": 0.591}),
    "sdxl": FamilySize(
        1024, 2_567_463_684, 817_720_320,
        unet_lora={"attention": LoraGroup(560, 1_451_520), "transformer": LoraGroup(162, 1_208_320),
                   "resnet": LoraGroup(28, 58_560), "conv": LoraGroup(38, 355_840)},
        text_lora={"attention": LoraGroup(176, 401_408), "mlp": LoraGroup(88, 501_760)},
        activations_gib={"attention": 12.293, "kohya": 14.497, "locon": 15.483},
        checkpointed_gib={"attention": 0.794, "kohya": 1.006, "locon": 1.141}),
}


# A step's work (U-Net forward + backward) per network, relative to attention only: bench/flops.py's count
# on SD1.5 at 512 px (SDXL at 1024 px: 1.011 and 1.027). The plan's time estimate scales by it.
STEP_COST = {"attention": 1.0, "kohya": 1.013, "locon": 1.029}


def network_kind(options: TrainOptions) -> str:
    """"attention", "kohya" or "locon": which of the table's module kinds the options' network trains."""
    if options.network_modules == "attention":
        return "attention"
    return "locon" if options.conv_dim > 0 else "kohya"


@dataclass(frozen=True)
class LoraSize:
    modules: int
    parameters: int


def lora_size(options: TrainOptions) -> LoraSize:
    """The LoRA's modules and parameters on a base model of the family's usual size."""
    size, kind = FAMILY_SIZES[options.family], network_kind(options)
    groups = [(size.unet_lora[g], options.conv_dim if g == "conv" else options.network_dim)
              for g in UNET_GROUPS[kind]]
    if options.train_text_encoder:
        groups += [(size.text_lora[g], options.network_dim) for g in TEXT_GROUPS[kind]]
    return LoraSize(sum(group.modules for group, _ in groups),
                    sum(group.per_rank * rank for group, rank in groups))


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
    size, kind = FAMILY_SIZES[options.family], network_kind(options)
    weight_bytes = 4 if options.mixed_precision == "no" else 2
    # Trained encoders need their weights for the backward; shuffled captions are read afresh every step.
    text_stays = options.train_text_encoder or options.shuffle_captions
    weights = (size.unet_params + (size.text_params if text_stays else 0)) * weight_bytes
    lora = lora_size(options).parameters * (4 + 4 + _OPTIMIZER_STATE_BYTES.get(options.optimizer, 8))
    # Activations grow with the pixels of a batch; fp32 doubles them.
    scale = options.batch_size * (options.resolution / size.resolution) ** 2 * weight_bytes / 2
    plain, checkpointed = size.activations_gib[kind] * scale, size.checkpointed_gib[kind] * scale
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
