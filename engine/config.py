"""lorabake's TOML configuration: every key, its default and its allowed range live in the dataclasses
below; `config.example.toml` documents them for server owners. Loading never raises anything but
ConfigError, whose message is one line naming the key and what is wrong."""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN_ENV_VARS = ("LORABAKE_DISCORD_TOKEN", "DISCORD_TOKEN")


class ConfigError(ValueError):
    pass


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"low": low, "high": high}


@dataclass(frozen=True)
class DiscordConfig:
    token: str = ""
    guild_id: int = field(default=0, metadata=_range(0))
    allowed_channel_ids: list[int] = field(default_factory=list)
    allowed_role_ids: list[int] = field(default_factory=list)
    commands_per_minute: int = field(default=20, metadata=_range(1, 600))
    status_edit_interval_s: float = field(default=3.0, metadata=_range(0.1, 60.0))


@dataclass(frozen=True)
class QueueConfig:
    max_queued_per_user: int = field(default=3, metadata=_range(1, 100))
    max_projects_per_user: int = field(default=20, metadata=_range(1, 1000))
    max_attempts: int = field(default=2, metadata=_range(1, 10))
    cancel_grace_s: float = field(default=5.0, metadata=_range(0.0, 120.0))


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata=_range(0, 65535))
    public_url: str = ""
    link_ttl_hours: float = field(default=24.0, metadata=_range(0.01, 24 * 30))
    secret: str = ""


@dataclass(frozen=True)
class RetentionConfig:
    finished_jobs_days: float = field(default=30.0, metadata=_range(0.01, 3650))
    maintenance_interval_minutes: float = field(default=10.0, metadata=_range(0.1, 1440))


@dataclass(frozen=True)
class IntakeConfig:
    max_file_mb: float = field(default=50.0, metadata=_range(0.1, 1000))
    # Decoded size limit: stops decompression bombs before Pillow allocates them.
    max_pixels: int = field(default=50_000_000, metadata=_range(1_000_000, 400_000_000))
    min_side: int = field(default=256, metadata=_range(16, 4096))
    max_side: int = field(default=2048, metadata=_range(256, 8192))
    near_duplicate_distance: int = field(default=6, metadata=_range(0, 32))
    max_zip_entries: int = field(default=500, metadata=_range(1, 10_000))
    max_zip_mb: float = field(default=1024.0, metadata=_range(1, 20_000))
    max_zip_ratio: float = field(default=100.0, metadata=_range(2, 10_000))
    max_images_per_project: int = field(default=300, metadata=_range(1, 10_000))
    max_images_per_user: int = field(default=2000, metadata=_range(1, 1_000_000))


DEFAULT_TAG_BLACKLIST = [
    "virtual youtuber", "parody", "style parody", "official alternate costume", "official alternate hairstyle",
    "official alternate hair length", "alternate costume", "alternate hairstyle", "alternate hair length",
    "alternate hair color",
]


@dataclass(frozen=True)
class TaggerConfig:
    model: str = "SmilingWolf/wd-vit-tagger-v3"
    general_threshold: float = field(default=0.35, metadata=_range(0.0, 2.0))
    character_threshold: float = field(default=0.85, metadata=_range(0.0, 2.0))
    include_ratings: bool = False
    blacklist: list[str] = field(default_factory=lambda: list(DEFAULT_TAG_BLACKLIST))
    batch_size: int = field(default=8, metadata=_range(1, 256))
    cache_dir: str = ""


@dataclass(frozen=True)
class ModelsConfig:
    # The base model LoRAs are trained for: a diffusers folder, a single .safetensors file or a Hub id.
    # Its tokenizer also tells whether a trigger word is already a known token.
    base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    web: WebConfig = field(default_factory=WebConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    tagger: TaggerConfig = field(default_factory=TaggerConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)

    @property
    def web_base_url(self) -> str:
        return self.web.public_url.rstrip("/") or f"http://{self.web.host}:{self.web.port}"


def load_config(path: Path | None, *, env: dict[str, str] | None = None) -> Config:
    """Reads `path` (None: defaults only), then takes the Discord token from the environment if the
    file has none. Relative data_dir is resolved against the config file's folder."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (copy config.example.toml to start one)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = path.resolve().parent
    where = str(path) if path else "config"
    config = _build(Config, raw, where, section="")
    if not config.discord.token:
        token = next((env[name] for name in TOKEN_ENV_VARS if env.get(name)), "")
        config = dataclasses.replace(config, discord=dataclasses.replace(config.discord, token=token))
    if not config.data_dir.is_absolute():
        config = dataclasses.replace(config, data_dir=base / config.data_dir)
    return config


def _build(cls: type, raw: dict[str, Any], where: str, section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        shown = unknown[0] if unknown[0].isidentifier() else repr(unknown[0])  # one line, whatever was typed
        name = f"[{section}] {shown}" if section else shown
        raise ConfigError(f"{where}: unknown key {name} (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in raw:
            continue
        key = f"[{section}] {name}" if section else name
        if name in _SECTIONS:
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{where}: {name} must be a [{name}] table")
            values[name] = _build(_SECTIONS[name], raw[name], where, name)
        else:
            values[name] = _check_value(spec, raw[name], f"{where}: {key}")
    return cls(**values)


_SECTIONS: dict[str, type] = {
    "discord": DiscordConfig, "queue": QueueConfig, "web": WebConfig, "retention": RetentionConfig,
    "intake": IntakeConfig, "tagger": TaggerConfig, "models": ModelsConfig,
}


def _check_value(spec: dataclasses.Field, value: Any, key: str) -> Any:
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string in quotes, got {value!r}")
        return value
    if kind == "Path":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a folder path in quotes, got {value!r}")
        return Path(value).expanduser()
    if kind == "list[int]":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{key} must be a list of Discord ids (numbers without quotes), got {value!r}")
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings in quotes, got {value!r}")
        return value
    if kind in ("int", "float"):
        numeric = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            noun = "a whole number" if kind == "int" else "a number"
            raise ConfigError(f"{key} must be {noun}, got {value!r}")
        low, high = spec.metadata.get("low"), spec.metadata.get("high")
        # nan compares false with everything, so it is caught by isfinite, not by the bounds.
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{key} must be {bounds}, got {value!r}")
        return float(value) if kind == "float" else value
    raise AssertionError(f"unhandled config type {kind} for {key}")
