"""Training options: the kohya-colab defaults members already know (DESIGN §3), one preset per family,
and overrides typed by members (`--set unet_lr=5e-4`, Discord modals) parsed and range-checked.

Every option's allowed values live in RULES, in one place; the dataclass holds the defaults."""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from engine.errors import Invalid

Family = Literal["sd15", "sdxl"]
Value = str | int | float | bool
FAMILIES: tuple[str, ...] = ("sd15", "sdxl")


@dataclass(frozen=True)
class TrainOptions:
    """Defaults are SD1.5's (kohya-colab's LoRA trainer); `preset("sdxl")` holds SDXL's."""
    family: Family = "sd15"                 # from the base model; not a member's choice
    resolution: int = 512
    repeats: int = 10
    epochs: int = 10
    batch_size: int = 2
    unet_lr: float = 5e-4
    text_encoder_lr: float = 1e-4
    train_text_encoder: bool = True
    lr_scheduler: str = "cosine_with_restarts"
    lr_restarts: int = 3                    # cycles of cosine_with_restarts
    warmup_ratio: float = 0.05
    min_snr_gamma: float = 5.0              # 0 turns min-SNR weighting off
    noise_offset: float = 0.0
    multires_noise_iterations: int = 0      # 0 turns multires (pyramid) noise off
    multires_noise_discount: float = 0.3
    network_dim: int = 16
    network_alpha: float = 8.0
    # LoCon (kohya's `networks.lora` with `conv_dim`): LoRA on the ResNet blocks' 3×3 convolutions and the
    # down/upsamplers too, at this rank and alpha; 0 = plain LoRA, kohya's default. `network=locon` sets
    # kohya-colab's LoCon values (NETWORK_PRESETS).
    conv_dim: int = 0
    conv_alpha: float = 1.0
    # "kohya": kohya's default module set (every Linear and 1×1 conv of the U-Net's transformer blocks, every
    # Linear of the text encoders' attention and MLP); "attention": the attention projections only.
    network_modules: str = "kohya"
    optimizer: str = "adamw8bit"            # the trainer falls back to adamw where bitsandbytes is missing
    clip_skip: int = 2
    keep_tokens: int = 1                    # caption tags kept in place when shuffling (the trigger word)
    shuffle_captions: bool = True
    flip_aug: bool = False
    bucket_min: int = 256
    bucket_max: int = 1024
    bucket_step: int = 64
    prior_loss_weight: float = 1.0          # loss weight of regularization pictures
    # What a regularization picture is trained on: "tags" = its own tag caption (what sd-scripts does with
    # caption files in the reg folder), "class" = the project's class alone (DreamBooth's prior preservation,
    # what sd-scripts does without them). Tags win in the toy world (bench/toy_quality.py): a reg picture's
    # tags say where its look comes from, so the character's traits are left to the trigger, as pruning does
    # for the training pictures; on the class alone, the reg pictures that happen to share a trait (purple
    # hair) tell the LoRA the trait comes without the trigger, and it learns less (fidelity 71 % vs 42 %).
    reg_captions: str = "tags"
    save_every_n_epochs: int = 1
    keep_last_n: int = 10                   # per-epoch files kept (kohya-colab keep_only_last_n_epochs)
    seed: int = 42
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    max_train_steps_cap: int = 10_000       # the server's limit, not a member's choice

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, saved: Mapping[str, object]) -> TrainOptions:
        """Options stored with a job (`to_dict()`), also those stored before an option existed: such a job
        trains as lorabake did then (LEGACY), so a training queued or interrupted across an upgrade goes on
        with the network its saved state holds."""
        return cls(**{**LEGACY, **saved})  # type: ignore[arg-type]


# What options that did not exist yet meant: lorabake trained the attention projections only.
LEGACY: dict[str, object] = {"network_modules": "attention"}


_PRESETS: dict[str, TrainOptions] = {
    "sd15": TrainOptions(),
    "sdxl": TrainOptions(
        family="sdxl", resolution=1024, repeats=2, batch_size=4, unet_lr=3e-4, text_encoder_lr=6e-5,
        min_snr_gamma=8.0, multires_noise_iterations=6, multires_noise_discount=0.3, network_dim=8,
        network_alpha=4.0,
        # sd-scripts caps each bucket side at bucket_max: at 1024 px that would leave SDXL almost only
        # square buckets (1344×768 is one of its standard shapes), so SDXL trainers use 2048.
        bucket_max=2048,
        # SDXL has no clip-skip convention (sd-scripts ignores it): 1 = the last layer, as SDXL uses.
        clip_skip=1,
        # fp16 overflows in SDXL's UNet/VAE far more often; 24 GB cards need checkpointing at 1024 px.
        mixed_precision="bf16", gradient_checkpointing=True,
    ),
}


def preset(family: str, resolution: int | None = None) -> TrainOptions:
    """The family's kohya-colab defaults; at `resolution` (the base model's own, when it differs from the
    family's usual one: an SD 2.x 768 model, the toy world's 64 px) with the buckets scaled alike."""
    if family not in _PRESETS:
        raise Invalid(f"no training preset for model family {family!r} (known: {', '.join(FAMILIES)})")
    options = _PRESETS[family]
    if not resolution or resolution == options.resolution or resolution % 64:
        return options
    ratio = resolution / options.resolution
    return dataclasses.replace(
        options, resolution=resolution, bucket_min=max(64, round(options.bucket_min * ratio / 64) * 64),
        bucket_max=max(resolution, round(options.bucket_max * ratio / 64) * 64),
        bucket_step=max(8, round(options.bucket_step * ratio / 8) * 8))


def group_learning_rates(options: TrainOptions) -> tuple[float, float]:
    """(UNet, text encoder) learning rates given to the optimizer. Prodigy finds its own step size and
    expects lr ≈ 1 (with 5e-4 it barely moves); it refuses different rates per parameter group, so both get
    1, as kohya-colab sets them."""
    if options.optimizer == "prodigy":
        return 1.0, 1.0
    return options.unet_lr, options.text_encoder_lr


# --- what members may set, and to what ---------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    multiple_of: int | None = None


LR_SCHEDULERS = ("cosine_with_restarts", "constant", "linear", "cosine")
OPTIMIZERS = ("adamw8bit", "adamw", "prodigy")
MIXED_PRECISIONS = ("fp16", "bf16", "no")
REG_CAPTIONS = ("tags", "class")
NETWORK_MODULES = ("kohya", "attention")
# `network=…`: kohya-colab's "LoRA type" choice, as the values it sets (its LoCon row: dim 16, alpha 8,
# conv_dim 8, conv_alpha 1). Options typed beside it win.
NETWORK_PRESETS: dict[str, dict[str, Value]] = {
    "lora": {"conv_dim": 0},
    "locon": {"network_dim": 16, "network_alpha": 8, "conv_dim": 8, "conv_alpha": 1},
}

RULES: dict[str, Rule] = {
    "resolution": Rule(64, 2048, multiple_of=64),  # under 256 only makes sense for quick tests
    "repeats": Rule(1, 100),
    "epochs": Rule(1, 100),
    "batch_size": Rule(1, 32),
    "unet_lr": Rule(1e-6, 1e-2),
    "text_encoder_lr": Rule(1e-7, 1e-2),
    "train_text_encoder": Rule(),
    "lr_scheduler": Rule(choices=LR_SCHEDULERS),
    "lr_restarts": Rule(1, 20),
    "warmup_ratio": Rule(0, 0.5),
    "min_snr_gamma": Rule(0, 20),
    "noise_offset": Rule(0, 0.5),
    "multires_noise_iterations": Rule(0, 10),
    "multires_noise_discount": Rule(0, 1),
    "network_dim": Rule(1, 256),
    "network_alpha": Rule(0.01, 256),
    "conv_dim": Rule(0, 256),
    "conv_alpha": Rule(0.01, 256),
    "network_modules": Rule(choices=NETWORK_MODULES),
    "optimizer": Rule(choices=OPTIMIZERS),
    "clip_skip": Rule(1, 12),
    "keep_tokens": Rule(0, 32),
    "shuffle_captions": Rule(),
    "flip_aug": Rule(),
    "bucket_min": Rule(64, 2048, multiple_of=64),
    "bucket_max": Rule(64, 4096, multiple_of=64),
    "bucket_step": Rule(8, 256, multiple_of=8),
    "prior_loss_weight": Rule(0, 10),
    "reg_captions": Rule(choices=REG_CAPTIONS),
    "save_every_n_epochs": Rule(1, 100),
    "keep_last_n": Rule(1, 100),
    "seed": Rule(0, 2**32 - 1),
    "mixed_precision": Rule(choices=MIXED_PRECISIONS),
    "gradient_checkpointing": Rule(),
}
# Short names members type; each maps to one option.
ALIASES: dict[str, str] = {
    "lr": "unet_lr", "te_lr": "text_encoder_lr", "dim": "network_dim", "rank": "network_dim",
    "alpha": "network_alpha", "batch": "batch_size", "scheduler": "lr_scheduler", "warmup": "warmup_ratio",
    "snr_gamma": "min_snr_gamma", "flip": "flip_aug", "shuffle": "shuffle_captions",
    "precision": "mixed_precision", "res": "resolution", "conv_rank": "conv_dim",
}
_NOT_SETTABLE = {
    "family": "family comes from the base model, it cannot be set",
    "max_train_steps_cap": "max_train_steps_cap is the server's limit, not a training option",
}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainOptions)}
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}



def _fmt(x: float) -> str:
    """1e-06 → 1e-6, 10000 → 10,000, 0.05 → 0.05."""
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), f"{x:g}")


def _range_text(rule: Rule) -> str:
    text = f"between {_fmt(rule.low)} and {_fmt(rule.high)}"  # type: ignore[arg-type]
    return text + (f" in steps of {rule.multiple_of}" if rule.multiple_of else "")


def _canonical_key(key: str) -> str:
    name = str(key).strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(name, name)


def _parse(name: str, raw: Value) -> Value:
    kind = _FIELD_TYPES[name]
    rule = RULES[name]
    shown = repr(raw) if isinstance(raw, str) else str(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise Invalid(f"{name} must be true or false, got {shown}")
    if kind == "str":
        text = str(raw).strip().lower().replace("-", "_").replace(" ", "_")
        if text not in rule.choices:
            raise Invalid(f"{name} must be one of {', '.join(rule.choices)}, got {shown}")
        return text
    # Numbers: int and float fields.
    if isinstance(raw, bool):
        raise Invalid(f"{name} must be a number {_range_text(rule)}, got {shown}")
    try:
        number = float(str(raw).strip().replace("_", "").replace(",", "")) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        raise Invalid(f"{name} must be a number {_range_text(rule)}, got {shown}") from None
    whole = kind == "int"
    if not math.isfinite(number) or (whole and not number.is_integer()):
        what = "a whole number" if whole else "a number"
        raise Invalid(f"{name} must be {what} {_range_text(rule)}, got {shown}")
    if not rule.low <= number <= rule.high:  # type: ignore[operator]
        raise Invalid(f"{name} must be {_range_text(rule)}, got {str(raw).strip()}")
    if rule.multiple_of and number % rule.multiple_of:
        raise Invalid(f"{name} must be a multiple of {rule.multiple_of} ({_range_text(rule)}), got {str(raw).strip()}")
    return int(number) if whole else number


def _check_together(options: TrainOptions) -> None:
    """Rules between options, checked after every override."""
    if options.bucket_min > options.bucket_max:
        raise Invalid(f"bucket_min ({options.bucket_min}) must not be above bucket_max ({options.bucket_max})")
    if not options.bucket_min <= options.resolution <= options.bucket_max:
        raise Invalid(f"resolution ({options.resolution}) must be between bucket_min ({options.bucket_min}) "
                      f"and bucket_max ({options.bucket_max})")


def apply_overrides(options: TrainOptions, overrides: dict[str, Value]) -> TrainOptions:
    """A copy of `options` with `overrides` parsed ("5e-4", "true", "Cosine") and checked. Raises Invalid
    naming the option and its allowed values; an unknown key gets a did-you-mean suggestion."""
    changes: dict[str, Value] = {}
    overrides = _with_network_preset(overrides)
    for key, raw in overrides.items():
        name = _canonical_key(key)
        if name in _NOT_SETTABLE:
            raise Invalid(_NOT_SETTABLE[name])
        if name not in RULES:
            raise Invalid(_unknown(str(key)))
        changes[name] = _parse(name, raw)
    result = dataclasses.replace(options, **changes)  # type: ignore[arg-type]
    _check_together(result)
    return result


def _with_network_preset(overrides: dict[str, Value]) -> dict[str, Value]:
    """`network=locon` replaced by the values it stands for, under the options typed beside it."""
    keys = [key for key in overrides if _canonical_key(key) in ("network", "lora_type")]
    if not keys:
        return overrides
    rest = {key: value for key, value in overrides.items() if key not in keys}
    choice = str(overrides[keys[-1]]).strip().lower()
    if choice not in NETWORK_PRESETS:
        raise Invalid(f"network must be one of {', '.join(NETWORK_PRESETS)}, got {overrides[keys[-1]]!r}")
    typed = {_canonical_key(key) for key in rest}
    return {**{k: v for k, v in NETWORK_PRESETS[choice].items() if k not in typed}, **rest}


def _unknown(key: str) -> str:
    names = sorted(RULES)
    close = difflib.get_close_matches(_canonical_key(key), [*names, *ALIASES, "network"], n=1, cutoff=0.6)
    if close:
        return f"unknown option {key!r}: did you mean {ALIASES.get(close[0], close[0])}?"
    return f"unknown option {key!r} (options: {', '.join(names)})"


def describe_rules() -> dict[str, str]:
    """Each settable option and what it accepts, for help texts."""
    out = {"network": "one of " + ", ".join(NETWORK_PRESETS) + " (locon sets kohya-colab's LoCon values)"}
    for name, rule in RULES.items():
        if rule.choices:
            out[name] = "one of " + ", ".join(rule.choices)
        elif rule.low is None:
            out[name] = "true or false"
        else:
            out[name] = ("a whole number " if _FIELD_TYPES[name] == "int" else "a number ") + _range_text(rule)
    return out
