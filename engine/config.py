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
    # GPU-lane jobs run one after another in one long-lived worker that keeps the last base model loaded
    # (reg → training → samples load it once); off: a fresh process per job.
    warm_worker: bool = True
    # A warm worker holding more than this much host memory after a job is replaced by a fresh one (0: never).
    warm_worker_max_rss_gb: float = field(default=24.0, metadata=_range(0.0, 4096.0))


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
    # A training plan's Start button works this long after the plan was shown.
    training_plans_days: float = field(default=14.0, metadata=_range(0.01, 3650))
    maintenance_interval_minutes: float = field(default=10.0, metadata=_range(0.1, 1440))


@dataclass(frozen=True)
class IntakeConfig:
    max_file_mb: float = field(default=50.0, metadata=_range(0.1, 1000))
    # Decoded size limit: stops decompression bombs before Pillow allocates them.
    max_pixels: int = field(default=50_000_000, metadata=_range(1_000_000, 400_000_000))
    # Pixels decoded per upload, all its files together: a 47 KB PNG may declare 49 megapixels, and each
    # costs seconds of CPU to decode. 1500 is about 125 phone photos of 12 megapixels.
    max_upload_megapixels: int = field(default=1500, metadata=_range(50, 1_000_000))
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


MODEL_FAMILIES = ("sd15", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str | None:
        if value not in choices:
            return "must be one of " + ", ".join(f'"{c}"' for c in choices)
        return None
    return check


@dataclass(frozen=True)
class ModelsConfig:
    # The family a training uses when the member does not pick one; its model's tokenizer also tells
    # whether a trigger word is already a known token.
    default_family: str = field(default="sd15", metadata={"check": _one_of(MODEL_FAMILIES)})
    # The base model of each family: a diffusers folder, a single .safetensors file or a Hub id.
    sd15: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    sdxl: str = "stabilityai/stable-diffusion-xl-base-1.0"
    # "" = what the model says (single files rarely say: epsilon); otherwise forced.
    sd15_prediction: str = field(default="", metadata={"check": _one_of(("", *PREDICTION_TYPES))})
    sdxl_prediction: str = field(default="", metadata={"check": _one_of(("", *PREDICTION_TYPES))})

    @property
    def base(self) -> str:
        """The default family's base model."""
        return self.spec_for(self.default_family)

    def spec_for(self, family: str) -> str:
        return str(getattr(self, _known_family(family)))

    def prediction_for(self, family: str) -> str | None:
        """The forced prediction type of `family`'s model, None to use what the model says."""
        return getattr(self, f"{_known_family(family)}_prediction") or None


def _known_family(family: str) -> str:
    # Callers check what members type (training_api); this guards against code passing a wrong name.
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r} (known: {', '.join(MODEL_FAMILIES)})")
    return family


def _sample_weights(weights: list[float]) -> str | None:
    if 0 not in weights:
        # Weight 0 is the base model: the leak score compares every sample with it, and the grids show it
        # as the "before" column.
        return "must include 0 (the base model: leak is measured against it), e.g. [0, 0.4, 0.6, 0.8, 1.0]"
    if len(set(weights)) != len(weights):
        return "lists a weight twice"
    if len(weights) < 2:
        return "needs at least one weight above 0 besides 0, e.g. [0, 0.6, 1.0]"
    return None


def _sample_size(size: int) -> str | None:
    if size and (size < 64 or size % 8):
        return "must be 0 (the base model's training resolution) or 64 to 2048 and a multiple of 8"
    return None


@dataclass(frozen=True)
class TrainingConfig:
    """The server's limits and speed guesses for /lora train."""
    max_steps: int = field(default=10_000, metadata=_range(1, 1_000_000))   # longer plans are refused
    # Seconds per training step at each family's preset (SD1.5 512 px batch 2; SDXL 1024 px batch 4), used
    # for the plan's time estimate until this server has finished a training of that family.
    sd15_seconds_per_step: float = field(default=0.5, metadata=_range(0.001, 600.0))
    sdxl_seconds_per_step: float = field(default=2.0, metadata=_range(0.001, 600.0))


@dataclass(frozen=True)
class SamplesConfig:
    # LoRA weights each kept epoch is sampled at; 0 is the base model and must be there.
    weights: list[float] = field(default_factory=lambda: [0.0, 0.4, 0.6, 0.8, 1.0],
                                 metadata={**_range(0.0, 2.0), "check": _sample_weights})
    seeds: list[int] = field(default_factory=lambda: [42], metadata=_range(0, 2**32 - 1))
    steps: int = field(default=28, metadata=_range(1, 150))
    # Classifier-free guidance (A1111's "CFG scale").
    guidance: float = field(default=7.0, metadata=_range(0.0, 30.0))
    # 0: the base model's training resolution (512 for SD1.5, 1024 for SDXL, a diffusers folder's own).
    size: int = field(default=0, metadata={**_range(0, 2048), "check": _sample_size})
    max_leak: float = field(default=0.15, metadata=_range(0.0, 1.0))
    # Sample images drawn per pipeline call: faster when larger, until the GPU's memory runs out.
    batch_size: int = field(default=4, metadata=_range(1, 64))
    auto_after_training: bool = True
    extra_models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegConfig:
    """Regularization (class) pictures rendered by the base model: /lora reg and `lorabake reg`."""
    count: int = field(default=100, metadata=_range(1, 10_000))          # when the member names no count
    max_count: int = field(default=1000, metadata=_range(1, 10_000))     # the most one request may ask for
    batch_size: int = field(default=4, metadata=_range(1, 64))
    steps: int = field(default=28, metadata=_range(1, 150))
    guidance: float = field(default=7.0, metadata=_range(0.0, 30.0))
    seed: int = field(default=1234, metadata=_range(0, 2**31 - 1))       # picture i gets seed + i
    # 0: the family's training resolution (512 for SD1.5, 1024 for SDXL).
    resolution: int = field(default=0, metadata={**_range(0, 2048), "check": _sample_size})
    quality_prompt: str = "masterpiece, best quality"
    negative_prompt: str = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
                            "fewer digits, cropped, worst quality, low quality, jpeg artifacts, signature, "
                            "watermark, blurry")


CLUSTER_BACKENDS = ("", "ray")


@dataclass(frozen=True)
class ClusterConfig:
    # "" (the default): every job runs on this machine and Ray is never imported. "ray": GPU-lane jobs run on
    # the GPU machines of a Ray cluster (engine/cluster/), this machine stays the head.
    backend: str = field(default="", metadata={"check": _one_of(CLUSTER_BACKENDS)})
    # The Ray cluster to join: "host:port" of `ray start --head` (on this machine, or reachable over a
    # private network or VPN only: Ray has no authentication).
    address: str = ""
    # Ray resources a GPU-lane job asks of a node: real GPUs (what `ray start --num-gpus` declares; 0 when
    # nodes only declare lorabake_gpu, as the tests' nodes do) ...
    gpus_per_job: float = field(default=1.0, metadata=_range(0.0, 8.0))
    # ... and GPU memory in GB (the node declares `lorabake_vram_gb`), by base-model family.
    sd15_vram_gb: float = field(default=8.0, metadata=_range(0.0, 1024.0))
    sdxl_vram_gb: float = field(default=16.0, metadata=_range(0.0, 1024.0))
    # true: a job goes only to a node that declares its base model (`lorabake_model_sd15` / `_sdxl`: the
    # [models] entry is in its cache); false: any node, which loads or downloads the model itself.
    nodes_declare_models: bool = False


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
    training: TrainingConfig = field(default_factory=TrainingConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

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
    "intake": IntakeConfig, "tagger": TaggerConfig, "models": ModelsConfig, "training": TrainingConfig,
    "samples": SamplesConfig, "reg": RegConfig, "cluster": ClusterConfig,
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
        _own_check(spec, value, key)
        return value
    if kind == "Path":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a folder path in quotes, got {value!r}")
        return Path(value).expanduser()
    if kind == "list[int]" and "low" not in spec.metadata:
        ids = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        if not ids:
            raise ConfigError(f"{key} must be a list of Discord ids (numbers without quotes), got {value!r}")
        return value
    if kind in ("list[int]", "list[float]"):
        return _check_number_list(spec, value, key, kind)
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
        _own_check(spec, value, key)
        return float(value) if kind == "float" else value
    raise AssertionError(f"unhandled config type {kind} for {key}")


def _check_number_list(spec: dataclasses.Field, value: Any, key: str, kind: str) -> list:
    """A non-empty list of numbers, each within the field's range, then the field's own check."""
    numeric = (int,) if kind == "list[int]" else (int, float)
    noun = "whole numbers" if kind == "list[int]" else "numbers"
    low, high = spec.metadata["low"], spec.metadata["high"]
    if not isinstance(value, list) or not value or not all(
            isinstance(v, numeric) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
            for v in value):
        raise ConfigError(f"{key} must be a non-empty list of {noun} between {low} and {high}, got {value!r}")
    _own_check(spec, value, key)
    return [float(v) for v in value] if kind == "list[float]" else value


def _own_check(spec: dataclasses.Field, value: Any, key: str) -> None:
    """A field's own rule beyond type and range (metadata "check": value → problem or None)."""
    problem = spec.metadata.get("check", lambda _: None)(value)
    if problem:
        raise ConfigError(f"{key} {problem}, got {value!r}")
