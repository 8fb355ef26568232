"""Which modules of a U-Net and of a CLIP text encoder get LoRA, at what rank, and what kohya calls them.

kohya's `networks.lora` (what the seed's trainer makes, and what A1111, ComfyUI and sd-scripts' own tools
expect) selects by class: every Linear and 1×1 Conv2d inside the U-Net's `Transformer2DModel` blocks, and
every Linear inside the text encoders' `CLIPAttention` and `CLIPMLP`. With `conv_dim` (LoCon) it also walks
`ResnetBlock2D`, `Downsample2D` and `Upsample2D`: their 3×3 convolutions get `conv_dim` / `conv_alpha`, the
Linear and 1×1 layers there (`time_emb_proj`, `conv_shortcut`) the network's own dim / alpha. diffusers'
classes carry the same names, so the same walk over a diffusers model finds the same modules.

Names: for SD 1.x kohya trains on a U-Net with diffusers' module names, so a key is the diffusers path with
dots as underscores. For SDXL it trains on Stability's (SGM) U-Net, `input_blocks.4.1.…` for diffusers'
`down_blocks.1.attentions.0.…`; `sgm_name` translates. tests/data/kohya_lora_names holds sd-scripts' own
list for both families, LoRA and LoCon, and the test compares key by key.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MODULE_SETS = ("kohya", "attention")
_TRANSFORMER_BLOCKS = ("Transformer2DModel",)
_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
_TEXT_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
# "attention": the projections lorabake trained before it followed kohya's set (files and resumable states
# of that time), and the toy world's comparison.
_ATTENTION_ONLY = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class Rank:
    rank: int
    alpha: float


@dataclass(frozen=True)
class Network:
    """The LoRA network of a run: kohya's `network_dim` / `network_alpha`, and `conv_dim` / `conv_alpha` for
    LoCon (0: no LoRA on the 3×3 convolutions, kohya's default)."""
    dim: int
    alpha: float
    conv_dim: int = 0
    conv_alpha: float = 1.0
    modules: str = "kohya"

    def __post_init__(self) -> None:
        if self.dim < 1 or self.conv_dim < 0:
            raise ValueError(f"LoRA rank must be at least 1 (conv rank at least 0), got {self.dim} / {self.conv_dim}")
        if self.alpha <= 0 or self.conv_alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha} / {self.conv_alpha}")
        if self.modules not in MODULE_SETS:
            raise ValueError(f"unknown LoRA module set {self.modules!r}; expected one of {MODULE_SETS}")

    @classmethod
    def of(cls, options: Any) -> Network:
        """From TrainOptions (network_dim, network_alpha, conv_dim, conv_alpha, network_modules)."""
        return cls(options.network_dim, options.network_alpha, options.conv_dim, options.conv_alpha,
                   options.network_modules)

    @property
    def is_locon(self) -> bool:
        return self.conv_dim > 0


def _is_linear(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Linear"   # by class name, as kohya matches (not subclasses)


def _is_conv(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv2d"


def _targets(model: torch.nn.Module, blocks: tuple[str, ...], network: Network,
             conv_blocks: tuple[str, ...] = ()) -> dict[str, Rank]:
    found: dict[str, Rank] = {}
    for name, block in model.named_modules():
        kind = type(block).__name__
        if kind not in blocks and kind not in conv_blocks:
            continue
        for child_name, child in block.named_modules():
            if not (_is_linear(child) or _is_conv(child)):
                continue
            path = f"{name}.{child_name}" if name else child_name
            if network.modules == "attention" and not path.endswith(_ATTENTION_ONLY):
                continue
            if _is_linear(child) or child.kernel_size == (1, 1):
                found[path] = Rank(network.dim, network.alpha)
            elif kind in conv_blocks:
                found[path] = Rank(network.conv_dim, network.conv_alpha)
    return found


def unet_targets(unet: torch.nn.Module, network: Network) -> dict[str, Rank]:
    """{diffusers module path: rank} of the U-Net's LoRA modules."""
    return _targets(unet, _TRANSFORMER_BLOCKS, network, _CONV_BLOCKS if network.is_locon else ())


def text_encoder_targets(encoder: torch.nn.Module, network: Network) -> dict[str, Rank]:
    return _targets(encoder, _TEXT_BLOCKS, network)


def lora_parameter_count(targets: dict[str, Rank], model: torch.nn.Module) -> int:
    """Parameters the LoRA adds: per module, rank × (in × kernel area + out)."""
    modules = dict(model.named_modules())
    total = 0
    for path, rank in targets.items():
        module = modules[path]
        if _is_conv(module):
            kh, kw = module.kernel_size
            total += rank.rank * (module.in_channels * kh * kw + module.out_channels)
        else:
            total += rank.rank * (module.in_features + module.out_features)
    return total


# --- SDXL: diffusers' U-Net paths → Stability's (SGM) names, as sd-scripts writes them ------------------

_RESNET_PARTS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(?P<where>down_blocks|up_blocks)\.(?P<i>\d+)\.(?P<kind>resnets|attentions)\.(?P<j>\d+)\."
                    r"(?P<rest>.+)$")
_MID = re.compile(r"^mid_block\.(?P<kind>resnets|attentions)\.(?P<j>\d+)\.(?P<rest>.+)$")
_SAMPLER = re.compile(r"^(?P<where>down_blocks|up_blocks)\.(?P<i>\d+)\.(?:downsamplers|upsamplers)\.0\.conv$")


def sgm_namer(unet: torch.nn.Module) -> Callable[[str], str]:
    """A function from a diffusers U-Net module path to the SGM path sd-scripts uses for SDXL LoRA names.

    SGM numbers a level's layers in one list: down level i holds `layers_per_block` (resnet, attention)
    pairs, then its downsampler; up level i holds one pair more, the upsampler sharing the last one's slot
    (after the attention, or after the resnet where the level has none). The mid block is resnet,
    attention, resnet."""
    config = unet.config
    per_level = config.layers_per_block
    if not isinstance(per_level, int):
        raise ValueError(f"layers_per_block {per_level!r}: SGM names need one count for every level")
    up_has_attention = ["CrossAttn" in kind for kind in config.up_block_types]

    def resnet_part(rest: str) -> str:
        head, _, tail = rest.partition(".")
        if head not in _RESNET_PARTS or tail:
            raise ValueError(f"no SGM name for the resnet part {rest!r}")
        return _RESNET_PARTS[head]

    def name(path: str) -> str:
        if match := _SAMPLER.match(path):
            i = int(match["i"])
            if match["where"] == "down_blocks":
                return f"input_blocks.{(i + 1) * (per_level + 1)}.0.op"
            return f"output_blocks.{i * (per_level + 1) + per_level}.{2 if up_has_attention[i] else 1}.conv"
        if match := _BLOCK.match(path):
            i, j, kind, rest = int(match["i"]), int(match["j"]), match["kind"], match["rest"]
            part = resnet_part(rest) if kind == "resnets" else rest
            slot = 0 if kind == "resnets" else 1
            if match["where"] == "down_blocks":
                return f"input_blocks.{1 + i * (per_level + 1) + j}.{slot}.{part}"
            return f"output_blocks.{i * (per_level + 1) + j}.{slot}.{part}"
        if match := _MID.match(path):
            j, kind, rest = int(match["j"]), match["kind"], match["rest"]
            if kind == "resnets":
                return f"middle_block.{2 * j}.{resnet_part(rest)}"
            return f"middle_block.1.{rest}"
        raise ValueError(f"no SGM name for the U-Net module {path!r}")

    return name
