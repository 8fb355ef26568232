"""How a samples run looks on Discord: the recommendation in one sentence, the fidelity/leak table, the
heat map and the grids as attachments (at most 10 per message, so several messages when there are more).
Used by /lora samples and by the status message of a samples job when it ends."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from bot.render import clip
from engine.samples.report import SampleResults

FILES_PER_MESSAGE = 10  # Discord's limit of attachments on one message


def scores_embed(results: SampleResults) -> discord.Embed:
    which = f"epoch {results.epoch}" if results.epoch is not None else "which epoch and weight?"
    embed = discord.Embed(title=clip(f"🔎 {results.project}: {which}", 256), colour=discord.Colour.green())
    lines = [f"**Use epoch {results.recommended_epoch} at weight {results.recommended_weight:g}.** "
             f"{results.explanation}"]
    if not results.current:
        lines.append("⚠️ The LoRA was trained again after these samples: run `/lora samples rerun:true` to see "
                     "the new files.")
    embed.description = clip("\n".join(lines), 4096)
    rows = [f"{'epoch':>5} {'weight':>6} {'fidelity':>8} {'leak':>6}"]
    rows += [f"{s.epoch:>5} {s.weight:>6g} {s.fidelity:>8.0%} {s.leak:>6.0%}"
             + (" ◀" if (s.epoch, s.weight) == (results.recommended_epoch, results.recommended_weight) else "")
             for s in results.scores if s.weight > 0]
    embed.add_field(name="Fidelity (character shown) and leak (other prompts bent toward it)",
                    value=clip("```\n" + "\n".join(rows) + "\n```", 1024), inline=False)
    if results.epoch is None and (results.models or results.skipped_models):
        shown = [f"✅ {model}" for model in results.models]
        shown += [f"⏭️ {model}: {why}" for model, why in results.skipped_models]
        embed.add_field(name=f"Epoch {results.recommended_epoch} on other base models",
                        value=clip("\n".join(shown), 1024), inline=False)
    embed.set_footer(text=f"Heat map: the recommendation is outlined; hatched cells change other prompts by more "
                          f"than {results.max_leak:.0%}.")
    return embed


async def post_results(results: SampleResults, first: Callable[..., Awaitable[object]],
                       more: Callable[..., Awaitable[object]]) -> None:
    """`first(embed=…, files=[…])` posts the embed with the first files; `more(files=[…])` each further
    `FILES_PER_MESSAGE` files (a channel's send, or an interaction's edit then its followups)."""
    batches = [results.files[i:i + FILES_PER_MESSAGE] for i in range(0, len(results.files), FILES_PER_MESSAGE)]
    batches = batches or [[]]
    await first(embed=scores_embed(results), files=[discord.File(path) for path in batches[0]])
    for batch in batches[1:]:
        await more(files=[discord.File(path) for path in batch])
