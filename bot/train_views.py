"""The advanced training options form: every option kohya users know, grouped into the five text boxes a
Discord modal allows, each pre-filled with the preset's values so a member edits numbers instead of
remembering names. Only the values the member changed become overrides; the engine validates them."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import discord

from bot.replies import report_error
from engine.errors import Invalid
from engine.training.options import TrainOptions

# (field id, label, options): labels are at most 45 characters (Discord); every settable option is in one group.
ADVANCED_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("learning", "Learning rates and schedule", ("unet_lr", "text_encoder_lr", "train_text_encoder", "optimizer",
                                     "lr_scheduler", "lr_restarts", "warmup_ratio")),
    ("noise", "Noise and loss", ("min_snr_gamma", "noise_offset", "multires_noise_iterations",
                                 "multires_noise_discount", "prior_loss_weight")),
    ("network", "Network and pictures", ("network_dim", "network_alpha", "resolution", "batch_size", "bucket_min",
                              "bucket_max", "bucket_step")),
    ("captions", "Captions and augmentation", ("keep_tokens", "shuffle_captions", "flip_aug", "clip_skip",
                                                            "reg_captions")),
    ("saving", "Saving and precision", ("save_every_n_epochs", "keep_last_n", "seed", "mixed_precision",
                              "gradient_checkpointing")),
)

OnSubmit = Callable[[discord.Interaction, dict[str, str]], Awaitable[None]]


def parse_settings(text: str) -> dict[str, str]:
    """"key=value" pairs separated by commas or lines, as members type advanced options; the engine
    validates each value."""
    settings: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.replace("\n", ",").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"`{part}` is not key=value (e.g. `unet_lr=3e-4, network_dim=32`)")
        settings[key.strip()] = value.strip()
    return settings


def option_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class AdvancedOptionsModal(discord.ui.Modal):
    """Shown by `/lora train advanced:True`. Modals cannot outlive a restart (discord.py keeps them in
    memory), so it holds its state itself; the plan it leads to is stored like any other."""

    def __init__(self, project: str, defaults: TrainOptions, overrides: Mapping[str, str],
                 on_submit: OnSubmit) -> None:
        super().__init__(title=f"Advanced options: {project}"[:45], timeout=900)
        self.overrides, self._on_submit = dict(overrides), on_submit
        values = defaults.to_dict()
        self.shown: dict[str, str] = {}
        self.boxes: list[discord.ui.TextInput] = []
        for field_id, label, names in ADVANCED_GROUPS:
            lines = []
            for name in names:
                shown = self.overrides.get(name, option_text(values[name]))
                self.shown[name] = shown
                lines.append(f"{name} = {shown}")
            box = discord.ui.TextInput(label=label, custom_id=field_id, style=discord.TextStyle.paragraph,
                                       default="\n".join(lines), required=False, max_length=1000)
            self.boxes.append(box)
            self.add_item(box)

    def changed(self) -> dict[str, str]:
        """The command's own options plus every value the member edited in the form."""
        result = dict(self.overrides)
        for box in self.boxes:
            for key, value in parse_settings(box.value or "").items():
                if self.shown.get(key) != value:
                    result[key] = value
        return result

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self._on_submit(interaction, self.changed())

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)
