"""What many test files need: asking the bot a slash command and clicking its buttons through the fake
Discord, a member's first project, running the `lorabake` command line, configs for the tiny models."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from engine.config import Config
from engine.devtools.pictures import picture
from engine.intake import IncomingFile
from tests.conftest import ALICE, ALICE_ACTOR, REPO, Studio
from tests.discord_helpers import text_of

# --- Discord ------------------------------------------------------------------------------------------


async def ask(studio: Studio, user: int, command: str, options: dict | None = None, *,
              until=lambda text: True, **kwargs) -> dict:
    """Runs a slash command and returns the answer the member sees (the first whose text passes `until`)."""
    interaction = await studio.fake.slash(user, command, options or {}, **kwargs)
    await interaction.acked()

    def answered(message: dict) -> bool:
        mine = message["id"] == interaction.original_id or message["id"] in interaction.followup_ids
        return mine and bool(text_of(message)) and until(text_of(message))

    return await studio.fake.wait_for_message(answered, timeout=30)


async def new_project(studio: Studio, user: int = ALICE, name: str = "XingBar30") -> dict:
    return await ask(studio, user, "lora new", {"name": name, "trigger": "XingBar", "class": "man"})


async def click(studio: Studio, user: int, message: dict, custom_id: str) -> dict:
    interaction = await studio.fake.click(user, message["id"], custom_id)
    await interaction.acked()
    return studio.fake.messages[message["id"]]


def caption_files(studio: Studio) -> dict[str, str]:
    folder = studio.engine.layout.project(ALICE, "XingBar30").dataset
    return {path.stem: path.read_text() for path in folder.glob("*.txt")}


# --- training on the tiny models -----------------------------------------------------------------------

TINY = "resolution=64, bucket_min=64, bucket_max=64, batch_size=2, network_dim=4, network_alpha=2"


async def captioned_project(studio: Studio) -> None:
    await new_project(studio)
    await studio.engine.add_images(ALICE_ACTOR, "XingBar30", [IncomingFile(f"p{n}.png", picture(n)) for n in range(2)])
    for image in await studio.engine.images(ALICE_ACTOR, "XingBar30"):
        await studio.engine.curation.edit_caption(ALICE_ACTOR, "XingBar30", image.id, "solo, shirt")


def tiny_config(config: Config, tiny_models) -> Config:
    return dataclasses.replace(
        config, models=dataclasses.replace(config.models, sd15=str(tiny_models.sd15)),
        tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger), general_threshold=0.2),
        reg=dataclasses.replace(config.reg, count=3, steps=2, resolution=64, batch_size=2, seed=10))


# --- the command line ----------------------------------------------------------------------------------

LORABAKE = REPO / ".venv" / "bin" / "lorabake"
if not LORABAKE.exists():  # another venv layout: the entry point next to this interpreter
    LORABAKE = Path(sys.executable).with_name("lorabake")


def lorabake_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LORABAKE_DISCORD_TOKEN", "DISCORD_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["LORABAKE_JOB_PLUGINS"] = "tests.jobkinds"
    return env


def lorabake(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LORABAKE), *args], cwd=cwd, env=lorabake_env(), capture_output=True, text=True,
                          timeout=timeout)


def ok_json(cwd: Path, *args: str, timeout: float = 60):
    done = lorabake(cwd, *args, "--json", timeout=timeout)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)
