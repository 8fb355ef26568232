"""/lora train: the plan first (pictures, repeats, epochs, steps, the reg-image doubling, time), then a
Start button that queues the training job and turns the message into its live status."""
from __future__ import annotations

import functools
import re

import discord
from discord import app_commands

from bot.access import actor_of
from bot.buttons import ReportsErrors, job_view
from bot.cogs import MODEL_CHOICES, LoraCog
from bot.cogs.projects import own_project_names
from bot.render import clip, job_embed
from bot.replies import defer_publicly
from bot.sample_posts import post_results
from bot.train_views import AdvancedOptionsModal, parse_settings
from engine.errors import NotFound
from engine.training_api import PlannedTraining


def plan_embed(planned: PlannedTraining) -> discord.Embed:
    plan, options = planned.plan, planned.options
    embed = discord.Embed(title=clip(f"🧪 Training plan for {planned.project} ({planned.family.upper()})", 256),
                          colour=discord.Colour.blurple())
    embed.description = clip("\n".join(plan.explanation), 4096)
    embed.add_field(name="Pictures", value=f"{plan.images} (+{plan.reg_images} reg)")
    embed.add_field(name="Repeats × epochs", value=f"{plan.repeats} × {plan.epochs}")
    embed.add_field(name="Steps", value=f"{plan.steps_per_epoch}/epoch, {plan.total_steps} in all")
    embed.add_field(name="Network", value=f"dim {options.network_dim}, alpha {options.network_alpha}")
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
        bot = interaction.client
        job = await bot.engine.training.start_remembered(actor_of(interaction), self.token)  # type: ignore[attr-defined]
        message = await interaction.edit_original_response(embed=job_embed(job), view=job_view(job.id, True))
        await bot.status_messages.track(job, message)  # type: ignore[attr-defined]


class TrainingCog(LoraCog):
    @app_commands.command(name="train", description="Plan a LoRA training, then start it")
    @app_commands.describe(project="One of your projects", epochs="Passes over the pictures (default 10)",
                           repeats="Times each picture is shown per epoch (default 10)",
                           network_dim="LoRA size (default 16)", unet_lr="UNet learning rate (default 5e-4)",
                           model="The base model family (default: the server's)",
                           advanced="Open a form with every option, filled in with the defaults",
                           settings="Advanced, typed: key=value pairs, e.g. noise_offset=0.05, flip_aug=true")
    @app_commands.choices(model=MODEL_CHOICES)
    @app_commands.autocomplete(project=own_project_names)
    async def train(self, interaction: discord.Interaction, project: str,
                    epochs: app_commands.Range[int, 1, 100] | None = None,
                    repeats: app_commands.Range[int, 1, 100] | None = None,
                    network_dim: app_commands.Range[int, 1, 256] | None = None,
                    unet_lr: str | None = None, model: str | None = None, advanced: bool = False,
                    settings: str = "") -> None:
        overrides = parse_settings(settings)
        for key, value in (("epochs", epochs), ("repeats", repeats), ("network_dim", network_dim),
                           ("unet_lr", unet_lr)):
            if value is not None:
                overrides[key] = str(value)
        show_plan = functools.partial(self.show_plan, project=project, family=model)
        if advanced:
            found = await self.engine.get_project(actor_of(interaction), project)  # fail before the form opens
            defaults = self.engine.training.defaults(model)
            await interaction.response.send_modal(AdvancedOptionsModal(found.name, defaults, overrides, show_plan))
            return
        await show_plan(interaction, overrides)

    async def show_plan(self, interaction: discord.Interaction, overrides: dict[str, str], *, project: str,
                        family: str | None) -> None:
        await defer_publicly(interaction)
        actor = actor_of(interaction)
        planned = await self.engine.training.plan(actor, project, overrides, family=family)
        token = await self.engine.training.remember(actor, planned.project, overrides, family=family)
        view = discord.ui.View(timeout=None)
        view.add_item(StartTrainingButton(token, interaction.user.id))
        await interaction.edit_original_response(embed=plan_embed(planned), view=view)

    @app_commands.command(name="download", description="Get a trained LoRA file (.safetensors)")
    @app_commands.describe(project="One of your projects",
                           epoch="A saved epoch (default: the one the samples recommend, else the final file)")
    @app_commands.autocomplete(project=own_project_names)
    async def download(self, interaction: discord.Interaction, project: str,
                       epoch: app_commands.Range[int, 1, 100] | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        actor = actor_of(interaction)
        lora = await self.engine.training.lora_file(actor, project, epoch)
        artifact, path = lora.artifact, lora.path
        size = f"{artifact.size / 2**20:.1f} MB"
        which = lora.description
        if artifact.size <= interaction.filesize_limit:
            await interaction.followup.send(f"📦 `{path.name}` ({size}): {which}. Load it in A1111, ComfyUI or "
                                            "diffusers.", file=discord.File(path), ephemeral=True)
            return
        link = await self.engine.download_link(actor, artifact.id)
        hours = self.engine.config.web.link_ttl_hours
        await interaction.followup.send(
            f"📦 `{path.name}` ({which}) is {size}, over this server's Discord upload limit. Download it here (the "
            f"link works for {hours:g} hours): {link}", ephemeral=True)

    @app_commands.command(name="samples",
                          description="Sample grids at several LoRA weights, scores and a recommendation")
    @app_commands.describe(project="One of your projects", epoch="Only this epoch's grid and scores",
                           rerun="Render new samples of every epoch instead of showing the last ones")
    @app_commands.autocomplete(project=own_project_names)
    async def samples(self, interaction: discord.Interaction, project: str,
                      epoch: app_commands.Range[int, 1, 100] | None = None, rerun: bool = False) -> None:
        await defer_publicly(interaction)
        actor = actor_of(interaction)
        if not rerun:
            try:
                results = await self.engine.training.latest_samples(actor, project, epoch)
            except NotFound:
                results = None  # none yet: render them
            if results is not None:
                await post_results(
                    results, lambda embed, files: interaction.edit_original_response(embed=embed, attachments=files),
                    interaction.followup.send)
                return
        job = await self.engine.training.samples(actor, project)
        message = await interaction.edit_original_response(embed=job_embed(job), view=job_view(job.id, True))
        await self.bot.status_messages.track(job, message)
