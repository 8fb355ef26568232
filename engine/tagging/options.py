"""What a tagging run is asked to do: the [tagger] config section, possibly overridden per job."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.config import TaggerConfig
from engine.tagging import TaggerError

_DEFAULTS = TaggerConfig()


@dataclass(frozen=True)
class TagOptions:
    model: str = _DEFAULTS.model                    # a local folder or a Hugging Face repo id
    cache_dir: str = _DEFAULTS.cache_dir            # "" = huggingface_hub's own cache (HF_HOME)
    general_threshold: float = _DEFAULTS.general_threshold
    character_threshold: float = _DEFAULTS.character_threshold  # above 1: no character tags
    include_ratings: bool = _DEFAULTS.include_ratings
    blacklist: tuple[str, ...] = field(default=tuple(_DEFAULTS.blacklist))
    batch_size: int = _DEFAULTS.batch_size          # models with a fixed batch size use theirs

    def __post_init__(self) -> None:
        # Job params arrive as JSON, so they are checked here too, not only by the config loader.
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            # `not 0 <= value <= 2` is also true for nan.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
                raise TaggerError(f"tagger {name} must be a number between 0 and 2, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TaggerError(f"tagger batch_size must be a whole number of at least 1, got {self.batch_size!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise TaggerError("tagger model must name a folder or a Hugging Face repo id")
        if isinstance(self.blacklist, str) or not all(isinstance(tag, str) for tag in self.blacklist):
            raise TaggerError(f"tagger blacklist must be a list of tags, got {self.blacklist!r}")
        object.__setattr__(self, "blacklist", tuple(self.blacklist))

    @classmethod
    def from_config(cls, config: TaggerConfig, **overrides: Any) -> TagOptions:
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, **overrides})

    @classmethod
    def from_params(cls, params: dict[str, Any], config: TaggerConfig = _DEFAULTS) -> TagOptions:
        """A job's params: keys named like the fields override the config; absent or null keep it."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_config(config, **{k: v for k, v in params.items() if k in names and v is not None})
