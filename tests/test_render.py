"""The pure rendering functions, called directly (no bot, no fake Discord): what a member reads, and that it
stays inside Discord's limits however long the input is."""
from __future__ import annotations

import dataclasses

import discord

from bot.curate.views import TAGS_PER_PAGE, curate_embed, curate_view, page_count
from bot.job_messages import job_embed, job_line
from bot.queue.views import queue_embed
from bot.tags.views import tag_page_embed, tags_view
from bot.training.views import plan_embed
from engine.curation.suggest import Suggestion
from engine.curation_api import CurationView
from engine.records import Job
from engine.tagging.analyze import TagCount
from engine.training.captions import example_captions
from engine.training.options import preset
from engine.training.plan import make_plan
from engine.training_api import PlannedTraining


def _within_limits(embed: discord.Embed) -> None:
    assert len(embed.title or "") <= 256 and len(embed.description or "") <= 4096
    assert len(embed.fields) <= 25 and all(len(f.value) <= 1024 and len(f.name) <= 256 for f in embed.fields)
    assert len(embed) <= 6000


def _buttons(view: discord.ui.View) -> list[discord.ui.Button]:
    """The buttons of a view; persistent ones are DynamicItems wrapping theirs."""
    return [getattr(child, "item", child) for child in view.children]


def _fields(embed: discord.Embed) -> dict[str, str]:
    return {field.name: field.value for field in embed.fields}


def test_the_training_plan_shows_steps_memory_and_what_the_model_reads() -> None:
    options = dataclasses.replace(preset("sd15"), epochs=6, repeats=5)
    plan = make_plan(options, train_images=12, reg_images=12)
    examples = example_captions("1boy, solo, smile", "1boy, purple hair", "XingBar", "1boy", options.reg_captions)
    embed = plan_embed(PlannedTraining("XingBar30", "sd15", options, plan, 2, examples))
    _within_limits(embed)
    fields = _fields(embed)
    assert embed.title == "🧪 Training plan for XingBar30 (SD15)"
    assert fields["Steps"] == f"{plan.steps_per_epoch}/epoch, {plan.total_steps} in all"
    assert "GPU memory during the steps: about" in embed.description
    assert "Training picture: `XingBar, 1boy, solo, smile`" in fields["What the model reads"]
    assert "Reg picture: `1boy, purple hair`" in fields["What the model reads"]
    assert fields["⚠️ No caption"] == "2 pictures: run /lora tag first"


def _view(tags: int, selected: list[str]) -> CurationView:
    stats = [TagCount(f"tag number {n} " + "x" * 90, 30 - n % 30, (30 - n % 30) / 30) for n in range(tags)]
    suggested = {stats[0].tag: Suggestion(stats[0].tag, stats[0].count, stats[0].share, "hair", "always there")}
    return CurationView(7, "XingBar30", "XingBar", "train", stats, suggested, selected, 30)


def test_curate_pages_fit_discord_and_mark_what_is_selected() -> None:
    view = _view(45, selected=["tag number 1 " + "x" * 90])
    assert page_count(view) == 3
    embed = curate_embed(view, page=0, note="removed 3 tags")
    _within_limits(embed)
    assert embed.footer.text == "page 1 of 3" and "Marked for removal" in embed.description
    ui = curate_view(view, page=0)
    buttons = _buttons(ui)
    assert len(buttons) == TAGS_PER_PAGE + 5 <= 25
    labels = [b.label for b in buttons]
    assert labels[0].startswith("⭐ tag number 0") and labels[1].startswith("✂ tag number 1")
    assert all(len(label) <= 80 for label in labels) and all(len(b.custom_id) <= 100 for b in buttons)
    last = curate_view(view, page=99)   # out of range: the last page, 5 tags and the controls
    assert len(last.children) == 5 + 5
    assert [b.disabled for b in _buttons(last)[-5:]][:3] == [False, True, False]   # prev, next, apply


def test_job_messages_say_where_a_job_stands() -> None:
    job = Job(id=4, user_id=1001, project_id=1, project_name="XingBar30", kind="train", title="Training",
              lane="gpu", state="queued", position=2, progress=None, result=None,
              error="lorabake restarted during attempt 1: the job went back in the queue", attempts=1,
              created_at=0.0, started_at=None, finished_at=None, kept_files=())
    queued = job_embed(job)
    _within_limits(queued)
    assert queued.title == "⏳ Training #4 — #2 in the GPU queue"
    assert _fields(queued)["Note"].startswith("lorabake restarted")
    running = job_embed(dataclasses.replace(job, state="running", position=None, attempts=2,
                                            progress={"step": 41, "total": 400, "message": "epoch 6",
                                                      "loss": 0.0291, "it_s": 3.2, "eta_s": 112}))
    progress = _fields(running)["Progress"]
    assert "step 41/400" in progress and "epoch 6" in progress and "ETA 0:01:52" in progress
    assert running.footer.text == "job #4 · attempt 2"
    failed = job_embed(dataclasses.replace(job, state="failed", error="x" * 5000, kept_files=("a.safetensors",)))
    _within_limits(failed)
    assert "Why" in _fields(failed) and "/lora download" in _fields(failed)["Kept"]
    assert job_line(job) == "⏳ `#4` Training · **XingBar30** — #2 in the GPU queue"
    _within_limits(queue_embed([job] * 200, everyone=True))


def test_tag_pages_turn_and_stay_in_range() -> None:
    stats = [TagCount(f"tag{n}", 10, 0.5) for n in range(45)]
    assert tag_page_embed("XingBar30", "train", stats, 7).footer.text == "page 3 of 3 · 45 distinct tags"
    assert tags_view(1, "train", 0, 20) is None   # one page: no buttons
    assert [b.disabled for b in _buttons(tags_view(1, "train", 0, 45))] == [True, False]
