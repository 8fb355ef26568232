"""/lora train and /lora download."""
from __future__ import annotations

import functools

import discord
from discord import app_commands

from bot.access import actor_of
from bot.commands import MODEL_CHOICES, LoraCog, own_project_names
from bot.replies import defer_publicly
from bot.training.views import AdvancedOptionsModal, StartTrainingButton, parse_settings, plan_embed

NETWORK_CHOICES = [app_commands.Choice(name="LoRA (kohya's default modules)", value="lora"),
                   app_commands.Choice(name="LoCon (kohya-colab: dim 16, alpha 8, conv 8, conv alpha 1)",
                                       value="locon")]


class TrainingCog(LoraCog):
    dynamic_items = (StartTrainingButton,)

    @app_commands.command(name="train", description="Plan a LoRA training, then start it")
    @app_commands.describe(project="One of your projects", epochs="Passes over the pictures (default 10)",
                           repeats="Times each picture is shown per epoch (default 10)",
                           network_dim="LoRA size (default 16)", unet_lr="UNet learning rate (default 5e-4)",
                           network="LoRA type: LoRA (kohya's default) or LoCon (also the 3×3 convolutions)",
                           model="The base model family (default: the server's)",
                           advanced="Open a form with every option, filled in with the defaults",
                           settings="Advanced, typed: key=value pairs, e.g. noise_offset=0.05, flip_aug=true")
    @app_commands.choices(model=MODEL_CHOICES, network=NETWORK_CHOICES)
    @app_commands.autocomplete(project=own_project_names)
    async def train(self, interaction: discord.Interaction, project: str,
                    epochs: app_commands.Range[int, 1, 100] | None = None,
                    repeats: app_commands.Range[int, 1, 100] | None = None,
                    network_dim: app_commands.Range[int, 1, 256] | None = None,
                    unet_lr: str | None = None, network: str | None = None, model: str | None = None,
                    advanced: bool = False, settings: str = "") -> None:
        overrides = parse_settings(settings)
        if network is not None:
            overrides.setdefault("network", network)
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
