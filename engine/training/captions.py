"""What the model reads for each picture, without torch (the bot shows it in the training plan):
the trigger first on a training picture's caption, and a reg picture's caption by TrainOptions.reg_captions."""
from __future__ import annotations


def with_trigger(caption: str, trigger: str) -> str:
    """The caption with the trigger word as its first tag (added if the tagger's caption lacks it)."""
    trigger = trigger.strip()
    if not trigger:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    if tags and tags[0] == trigger:
        return caption
    tags = [t for t in tags if t != trigger]
    return ", ".join([trigger, *tags])


def reg_caption(caption: str, class_name: str, mode: str) -> str:
    """What a regularization picture is trained on: "tags" = its own caption, "class" = the project's class
    alone (with no class to use, its own caption rather than nothing)."""
    class_name = class_name.strip()
    return class_name if mode == "class" and class_name else caption


def example_captions(train_caption: str, reg_caption_text: str | None, trigger: str, class_name: str,
                     mode: str) -> dict[str, str]:
    """One caption of each set as the model reads it (before the per-step shuffle): a training picture's
    with the trigger first, a reg picture's as `reg_caption` makes it ("reg" only when there is one)."""
    examples = {"train": with_trigger(train_caption, trigger)}
    if reg_caption_text is not None:
        examples["reg"] = reg_caption(reg_caption_text, class_name, mode)
    return examples
