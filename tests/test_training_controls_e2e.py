"""The controls around a training run, through the real bot, the fake Discord and a real worker on tiny
models: the advanced-options form, Cancel halfway (saved epochs are kept and downloadable), and a loss
that turns NaN (the run stops with advice, the last good epoch is kept)."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from engine.config import Config
from tests.conftest import ALICE, Studio
from tests.discord_helpers import custom_ids, text_of
from tests.fakediscord.limits import walk_components
from tests.helpers import TINY, ask, captioned_project
from tests.poisoned_training import POISON_AT_STEP


@pytest.fixture
def config(config: Config, tiny_models) -> Config:
    return dataclasses.replace(config, intake=dataclasses.replace(config.intake, min_side=32),
                               models=dataclasses.replace(config.models, sd15=str(tiny_models.sd15),
                                                          default_family="sd15"),
                               tagger=dataclasses.replace(config.tagger, model=str(tiny_models.tagger)))


def form_fields(modal: dict[str, Any]) -> dict[str, str]:
    """custom_id → pre-filled value of each text box in a modal, whatever rows or labels wrap them."""
    return {c["custom_id"]: c.get("value", "") for _, c in walk_components(modal["components"], "modal")
            if c.get("type") == 4}


async def test_advanced_form_is_prefilled_and_only_edits_count(studio: Studio) -> None:
    await captioned_project(studio)
    opened = await (await studio.fake.slash(ALICE, "lora train", {"project": "XingBar30", "advanced": True,
                                                                  "epochs": 3})).acked()
    assert opened.response_type == 9, "advanced:True opens a form"
    form = opened.response_data
    fields = form_fields(form)
    assert set(fields) == {"learning", "noise", "network", "captions", "saving"}
    assert "unet_lr = 0.0005" in fields["learning"] and "network_dim = 16" in fields["network"]

    edited = dict(fields, learning=fields["learning"].replace("unet_lr = 0.0005", "unet_lr = 3e-4"),
                  network=fields["network"].replace("network_dim = 16", "network_dim = 32"))
    submitted = await studio.fake.submit_modal(ALICE, form["custom_id"], edited)
    plan = await submitted.wait_original(lambda m: "Training plan" in text_of(m))
    assert "UNet 0.0003" in text_of(plan) and "dim 32" in text_of(plan) and "× 3" in text_of(plan)

    again = await (await studio.fake.slash(ALICE, "lora train", {"project": "XingBar30", "advanced": True})).acked()
    wild = dict(form_fields(again.response_data))
    wild["noise"] = wild["noise"].replace("noise_offset = 0", "noise_offset = 2")
    refused = await studio.fake.submit_modal(ALICE, again.response_data["custom_id"], wild)
    # Refused privately: the public "thinking…" is deleted and the reason comes as an ephemeral follow-up.
    reason = await refused.wait_followup(lambda m: "noise_offset" in text_of(m))
    assert "noise_offset must be between 0 and 0.5, got 2" in text_of(reason) and reason["flags"] & 64


async def start_training(studio: Studio, epochs: int) -> dict:
    await captioned_project(studio)
    plan = await ask(studio, ALICE, "lora train", {"project": "XingBar30", "epochs": epochs, "repeats": 1,
                                                   "settings": TINY})
    [start] = custom_ids(plan)
    await (await studio.fake.click(ALICE, plan["id"], start)).acked()
    return plan


async def test_cancel_halfway_keeps_the_saved_epochs(studio: Studio) -> None:
    plan = await start_training(studio, epochs=40)

    def in_an_early_epoch(message: dict) -> bool:  # edits are coalesced: any epoch from 3 on, well before 40
        found = re.search(r"\bepoch (\d+)\b", text_of(message))
        return message["id"] == plan["id"] and found is not None and 3 <= int(found[1]) <= 20

    running = await studio.fake.wait_for_message(in_an_early_epoch, timeout=120)
    [cancel] = [c for c in custom_ids(running) if "cancel" in c]
    await (await studio.fake.click(ALICE, plan["id"], cancel)).acked()
    ended = await studio.fake.wait_for_message(
        lambda m: m["id"] == plan["id"] and "cancelled" in text_of(m).lower(), timeout=60)
    output = studio.engine.layout.project(ALICE, "XingBar30").output
    saved = sorted(p.name for p in output.glob("XingBar30-*.safetensors"))
    assert "XingBar30-01.safetensors" in saved and "XingBar30-02.safetensors" in saved
    assert not (output / "XingBar30.safetensors").exists(), "no final file from a cancelled run"
    assert "XingBar30-02.safetensors" in text_of(ended) or "epoch" in text_of(ended)
    got = await ask(studio, ALICE, "lora download", {"project": "XingBar30", "epoch": 2})
    assert got["attachments"][0]["filename"] == "XingBar30-02.safetensors"


@pytest.fixture
def poisoned_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORABAKE_JOB_PLUGINS", "tests.jobkinds,tests.poisoned_training")


async def test_nan_loss_stops_with_advice_and_keeps_the_last_good_epoch(poisoned_training, studio: Studio) -> None:
    plan = await start_training(studio, epochs=6)   # TINY: 1 step per epoch, so epochs 1 and 2 are good
    ended = await studio.fake.wait_for_message(
        lambda m: m["id"] == plan["id"] and "failed" in text_of(m), timeout=120)
    assert (f"the loss became NaN at step {POISON_AT_STEP}, and 3 steps in a row were skipped: lower the learning "
            "rate") in text_of(ended)
    assert "XingBar30-02.safetensors" in text_of(ended)
    output = studio.engine.layout.project(ALICE, "XingBar30").output
    assert sorted(p.name for p in output.glob("XingBar30*.safetensors")) == [
        "XingBar30-01.safetensors", "XingBar30-02.safetensors"]
    got = await ask(studio, ALICE, "lora download", {"project": "XingBar30"})
    assert got["attachments"][0]["filename"] == "XingBar30-02.safetensors", "the last good epoch is handed out"
