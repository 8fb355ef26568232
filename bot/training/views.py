"""How a training is shown before it starts: the plan (steps, time, GPU memory, what the model reads) with its
Start button, which keeps working after a restart (the plan waits in the database), and the advanced
options form: every option kohya users know, grouped into the five text boxes a Discord modal allows, each
pre-filled with the preset's values so a member edits numbers instead of remembering names. Only the values
the member changed become overrides; the engine validates them."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping

import discord

from bot.access import actor_of
from bot.commands import engine_of
from bot.job_messages import show_job
from bot.render import clip
from bot.replies import ReportsErrors, report_error
from engine.errors import Invalid
from engine.training.options import TrainOptions
from engine.training_api import PlannedTraining

# (field id, label, options): labels are at most 45 characters (Discord); every settable option is in one group.
ADVANCED_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("learning", "Learning rates and schedule", ("unet_lr", "text_encoder_lr", "train_text_encoder", "optimizer",
                                     "lr_scheduler", "lr_restarts", "warmup_ratio")),
    ("noise", "Noise and loss", ("min_snr_gamma", "noise_offset", "multires_noise_iterations",
                                 "multires_noise_discount", "prior_loss_weight")),
    ("network", "Network and pictures", ("network_dim", "network_alpha", "conv_dim", "conv_alpha",
                                         "network_modules", "resolution", "batch_size", "bucket_min", "bucket_max",
                                         "bucket_step")),
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


def plan_embed(planned: PlannedTraining) -> discord.Embed:
    plan, options = planned.plan, planned.options
    embed = discord.Embed(title=clip(f"🧪 Training plan for {planned.project} ({planned.family.upper()})", 256),
                          colour=discord.Colour.blurple())
    embed.description = clip("\n".join(plan.explanation), 4096)
    embed.add_field(name="Pictures", value=f"{plan.images} (+{plan.reg_images} reg)")
    embed.add_field(name="Repeats × epochs", value=f"{plan.repeats} × {plan.epochs}")
    embed.add_field(name="Steps", value=f"{plan.steps_per_epoch}/epoch, {plan.total_steps} in all")
    network = f"dim {options.network_dim}, alpha {options.network_alpha:g}"
    if options.conv_dim:
        network = f"LoCon: {network}; conv {options.conv_dim}, alpha {options.conv_alpha:g}"
    embed.add_field(name="Network", value=f"{network} ({plan.lora_modules} modules)")
    embed.add_field(name="Learning rates", value=f"UNet {options.unet_lr:g}" + (
        f", text encoder {options.text_encoder_lr:g}" if options.train_text_encoder else ", text encoder frozen"))
    embed.add_field(name="Resolution", value=str(options.resolution))
    embed.add_field(name="What the model reads", inline=False, value=clip("\n".join(
        f"{which}: `{caption or '(no caption)'}`" for which, caption in (
            ("Training picture", planned.example_captions.get("train")),
            ("Reg picture", planned.example_captions.get("reg"))) if caption is not None), 1024))
    if planned.uncaptioned:
        embed.add_field(name="⚠️ No caption", value=f"{planned.uncaptioned} pictures: run /lora tag first", inline=False)
    embed.set_footer(text="Press Start to queue it; one file per epoch is kept so you can pick the best.")
    return embed


class StartTrainingButton(ReportsErrors, discord.ui.DynamicItem[discord.ui.Button],
                          template=r"lb:train:(?P<token>[0-9a-f]{12}):(?P<owner>\d+)"):
    def __init__(self, token: str, owner: int) -> None:
        self.token, self.owner = token, owner
        super().__init__(discord.ui.Button(label="Start training", style=discord.ButtonStyle.success, emoji="🚀",
                                           custom_id=f"lb:train:{token}:{owner}"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> StartTrainingButton:
        return cls(match["token"], int(match["owner"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.owner:
            await interaction.response.send_message("🚫 This is someone else's training plan.", ephemeral=True)
            return
        await interaction.response.defer()
        job = await engine_of(interaction).training.start_remembered(actor_of(interaction), self.token)
        await show_job(interaction, job)
