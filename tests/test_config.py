"""engine.config: defaults, the token from the environment, data_dir resolution, one-line errors that
name the key, and config.example.toml matching the code."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from engine.config import (
    ClusterConfig,
    Config,
    ConfigError,
    DiscordConfig,
    IntakeConfig,
    ModelsConfig,
    QueueConfig,
    RegConfig,
    RetentionConfig,
    SamplesConfig,
    TaggerConfig,
    TrainingConfig,
    WebConfig,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def _write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert message.strip() == message and message
    return message


def _sections(cls: type = Config, prefix: str = "") -> list[tuple[str, str, dataclasses.Field]]:
    """(section, name, field) for every leaf field, recursing into nested config dataclasses."""
    out = []
    for spec in dataclasses.fields(cls):
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(default):
            out.extend(_sections(type(default), spec.name))
        else:
            out.append((prefix, spec.name, spec))
    return out


# --- defaults and sources -------------------------------------------------------------------------


def test_no_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config == dataclasses.replace(Config(), data_dir=tmp_path.resolve() / "data")
    assert config.discord.token == ""
    assert config.queue.max_queued_per_user == 3
    assert config.web.port == 8765
    assert config.web_base_url == "http://127.0.0.1:8765"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""), env={})
    assert config == dataclasses.replace(Config(), data_dir=tmp_path.resolve() / "data")


def test_values_from_file_are_used_and_typed(tmp_path: Path) -> None:
    path = _write(tmp_path, """
data_dir = "/srv/lorabake"
[discord]
guild_id = 1234
allowed_channel_ids = [11, 22]
status_edit_interval_s = 2        # an int where a float is expected is fine
[queue]
max_queued_per_user = 5
[web]
enabled = false
port = 0
public_url = "https://bake.example.org/"
[retention]
finished_jobs_days = 7.5
""")
    config = load_config(path, env={})
    assert config.data_dir == Path("/srv/lorabake")
    assert config.discord.guild_id == 1234
    assert config.discord.allowed_channel_ids == [11, 22]
    assert config.discord.status_edit_interval_s == 2.0 and isinstance(config.discord.status_edit_interval_s, float)
    assert config.queue == QueueConfig(max_queued_per_user=5)
    assert config.web.enabled is False and config.web.port == 0
    assert config.web_base_url == "https://bake.example.org"
    assert config.retention == RetentionConfig(finished_jobs_days=7.5)


@pytest.mark.parametrize("var", ["LORABAKE_DISCORD_TOKEN", "DISCORD_TOKEN"])
def test_token_comes_from_the_environment_when_the_file_has_none(tmp_path: Path, var: str) -> None:
    path = _write(tmp_path, "[discord]\nguild_id = 5\n")
    assert load_config(path, env={var: "env-token"}).discord.token == "env-token"
    assert load_config(None, env={var: "env-token"}).discord.token == "env-token"


def test_lorabake_token_variable_wins_over_discord_token(tmp_path: Path) -> None:
    env = {"DISCORD_TOKEN": "generic", "LORABAKE_DISCORD_TOKEN": "specific"}
    assert load_config(None, env=env).discord.token == "specific"
    assert load_config(None, env={"DISCORD_TOKEN": "generic", "LORABAKE_DISCORD_TOKEN": ""}).discord.token == "generic"


def test_token_in_file_wins_over_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, '[discord]\ntoken = "file-token"\n')
    env = {"LORABAKE_DISCORD_TOKEN": "env-a", "DISCORD_TOKEN": "env-b"}
    assert load_config(path, env=env).discord.token == "file-token"


def test_process_environment_is_read_when_env_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORABAKE_DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("DISCORD_TOKEN", "from-os-environ")
    assert load_config(None).discord.token == "from-os-environ"


def test_relative_data_dir_is_resolved_against_the_config_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path.resolve() / "etc" / "lorabake"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = _write(conf_dir, 'data_dir = "store/data"\n')
    assert load_config(path, env={}).data_dir == conf_dir / "store" / "data"
    # Given as a relative path too, it is still the config file's folder that counts.
    relative = Path("..") / "etc" / "lorabake" / "config.toml"
    assert load_config(relative, env={}).data_dir == conf_dir / "store" / "data"
    # Default data_dir with a config file: next to the file.
    assert load_config(_write(conf_dir, "", "empty.toml"), env={}).data_dir == conf_dir / "data"


def test_absolute_and_home_data_dirs_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(_write(tmp_path, f'data_dir = "{tmp_path / "abs"}"\n'), env={}).data_dir == tmp_path / "abs"
    assert load_config(_write(tmp_path, 'data_dir = "~/bake"\n'), env={}).data_dir == tmp_path / "home" / "bake"


# --- bad input: one line, naming the key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "must_mention"),
    [
        ("colour = 1\n", ["unknown key", "colour"]),
        ("[discord]\nguild = 1\n", ["unknown key", "[discord] guild"]),
        ('[queue]\nmax_queued_per_user = "3"\n', ["[queue] max_queued_per_user", "whole number"]),
        ("[queue]\nmax_queued_per_user = 3.5\n", ["[queue] max_queued_per_user", "whole number"]),
        ("[queue]\nmax_queued_per_user = 3.0\n", ["[queue] max_queued_per_user", "whole number"]),
        ("[queue]\nmax_queued_per_user = true\n", ["[queue] max_queued_per_user", "whole number"]),
        ("[web]\nport = 70000\n", ["[web] port", "between 0 and 65535", "70000"]),
        ("[web]\nport = -1\n", ["[web] port", "between"]),
        ("[queue]\nmax_attempts = 0\n", ["[queue] max_attempts", "between 1 and 10"]),
        ("[discord]\nguild_id = -5\n", ["[discord] guild_id", "at least 0"]),
        ("[web]\nlink_ttl_hours = 0.0\n", ["[web] link_ttl_hours", "between"]),
        ("[web]\nlink_ttl_hours = inf\n", ["[web] link_ttl_hours", "between"]),
        ('[web]\nlink_ttl_hours = "24"\n', ["[web] link_ttl_hours", "a number"]),
        ("[web]\nenabled = 1\n", ["[web] enabled", "true or false"]),
        ('[web]\nenabled = "yes"\n', ["[web] enabled", "true or false"]),
        ("[web]\nhost = 127\n", ["[web] host", "string"]),
        ('[discord]\ntoken = ["a"]\n', ["[discord] token", "string"]),
        ("data_dir = 5\n", ["data_dir", "folder path"]),
        ('data_dir = ""\n', ["data_dir", "folder path"]),
        ('[discord]\nallowed_role_ids = ["123"]\n', ["[discord] allowed_role_ids", "Discord ids"]),
        ("[discord]\nallowed_role_ids = [123, -4]\n", ["[discord] allowed_role_ids", "Discord ids"]),
        ("[discord]\nallowed_channel_ids = [true]\n", ["[discord] allowed_channel_ids", "Discord ids"]),
        ("[discord]\nallowed_channel_ids = 123\n", ["[discord] allowed_channel_ids", "Discord ids"]),
        ("discord = 3\n", ["discord", "[discord] table"]),
        ('web = "on"\n', ["web", "[web] table"]),
        ("[web]\nport = 80\n[web]\nhost = 'x'\n", ["not valid TOML"]),
        ("[web\nport = 80\n", ["not valid TOML"]),
        ('token = "abc\n', ["not valid TOML"]),
        ('[discord]\nstatus_edit_interval_s = "fast"\n', ["[discord] status_edit_interval_s", "a number"]),
        ("[samples]\nweights = [0.4, 1.0]\n", ["[samples] weights", "must include 0", "base model"]),
        ("[samples]\nweights = [0, 2.5]\n", ["[samples] weights", "between 0.0 and 2.0"]),
        ("[samples]\nweights = []\n", ["[samples] weights", "non-empty list"]),
        ("[samples]\nweights = [0, 0.5, 0.5]\n", ["[samples] weights", "twice"]),
        ("[samples]\nweights = [0]\n", ["[samples] weights", "above 0"]),
        ('[samples]\nseeds = ["42"]\n', ["[samples] seeds", "whole numbers"]),
        ("[samples]\nsize = 100\n", ["[samples] size", "multiple of 8"]),
        ("[samples]\nsize = 32\n", ["[samples] size", "0 (the base model's"]),
        ("[samples]\nmax_leak = 1.5\n", ["[samples] max_leak", "between 0.0 and 1.0"]),
        ("[training]\nmax_steps = 0\n", ["[training] max_steps", "between 1 and 1000000"]),
        ("[training]\nsdxl_seconds_per_step = 0\n", ["[training] sdxl_seconds_per_step", "between 0.001"]),
        ('[samples]\nextra_models = "x"\n', ["[samples] extra_models", "list of strings"]),
        ('[models]\ndefault_family = "sd3"\n', ["[models] default_family", '"sd15", "sdxl"', "'sd3'"]),
        ('[models]\nsdxl_prediction = "v-pred"\n', ["[models] sdxl_prediction", '"v_prediction"', "'v-pred'"]),
        ('[models]\nsd15_prediction = "sample"\n', ["[models] sd15_prediction", '"epsilon"']),
        ('[models]\nbase = "old/key"\n', ["unknown key", "[models] base", "sd15", "default_family"]),
        ("[models]\nsdxl = 5\n", ["[models] sdxl", "string"]),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_key(tmp_path: Path, text: str, must_mention: list[str]) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message
    for fragment in must_mention:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_long_multiline_value_is_still_reported_on_one_line(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, '[web]\nport = """80\n81"""\n'))
    assert "[web] port" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = _error(missing)
    assert str(missing) in message and "config.example.toml" in message


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    assert str(tmp_path) in _error(tmp_path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[web]\nhost = "\xff\xfe"\n')
    assert "UTF-8" in _error(path)


@pytest.mark.parametrize("key", ["[discord]\nstatus_edit_interval_s", "[retention]\nfinished_jobs_days",
                                 "[web]\nlink_ttl_hours", "[queue]\ncancel_grace_s"])
def test_nan_is_out_of_range(tmp_path: Path, key: str) -> None:
    message = _error(_write(tmp_path, f"{key} = nan\n"))
    section, name = key.split("\n")
    assert f"{section} {name}" in message and "between" in message


def test_unknown_key_with_newline_is_reported_on_one_line(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, '"col\\nour" = 1\n'))
    assert "unknown key" in message and "col" in message and "our" in message


def test_error_for_every_numeric_field_names_that_field(tmp_path: Path) -> None:
    """Each numeric leaf field refuses a string, with its own [section] key in the message."""
    checked = 0
    for section, name, spec in _sections():
        if spec.type not in ("int", "float"):
            continue
        header = f"[{section}]\n" if section else ""
        message = _error(_write(tmp_path, f'{header}{name} = "x"\n'))
        assert (f"[{section}] {name}" if section else name) in message
        checked += 1
    assert checked >= 10


def test_models_name_a_base_model_and_prediction_per_family(tmp_path: Path) -> None:
    path = _write(tmp_path, '[models]\ndefault_family = "sdxl"\nsdxl = "/models/pony.safetensors"\n'
                            'sdxl_prediction = "v_prediction"\n')
    models = load_config(path, env={}).models
    assert models.base == models.spec_for("sdxl") == "/models/pony.safetensors"
    assert models.spec_for("sd15") == ModelsConfig().sd15 == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (models.prediction_for("sdxl"), models.prediction_for("sd15")) == ("v_prediction", None)
    assert ModelsConfig().base == ModelsConfig().sd15
    with pytest.raises(ValueError, match="sd15, sdxl"):
        models.spec_for("sd3")


# --- config.example.toml --------------------------------------------------------------------------


def _example_text() -> str:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing: it documents every config key for server owners"
    return EXAMPLE.read_text(encoding="utf-8")


def test_example_config_loads_to_exactly_the_defaults() -> None:
    _example_text()
    config = load_config(EXAMPLE, env={})
    assert config.data_dir == EXAMPLE.parent / Config().data_dir
    assert dataclasses.replace(config, data_dir=Config().data_dir) == Config()


def test_example_config_mentions_every_field_in_its_section() -> None:
    text = _example_text()
    header = re.compile(r"^\s*#?\s*\[([A-Za-z_][A-Za-z0-9_]*)\]\s*(#.*)?$")
    keys_by_section: dict[str, set[str]] = {"": set()}
    section = ""
    for line in text.splitlines():
        found = header.match(line)
        if found:
            section = found.group(1)
            keys_by_section.setdefault(section, set())
            continue
        key = re.match(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if key:
            keys_by_section[section].add(key.group(1))
    missing = [f"[{s}] {n}" if s else n for s, n, _ in _sections() if n not in keys_by_section.get(s, set())]
    assert missing == [], f"config.example.toml does not show: {missing}"
    for cls in (DiscordConfig, QueueConfig, WebConfig, RetentionConfig, IntakeConfig, TaggerConfig, ModelsConfig,
                TrainingConfig, SamplesConfig, ClusterConfig):
        assert dataclasses.fields(cls)  # the walk above really covers these sections
    sections = {s for s, _n, _f in _sections() if s}
    assert sections == {"discord", "queue", "web", "retention", "intake", "tagger", "models", "training", "samples",
                        "reg", "cluster"}


def _leaf_defaults() -> dict[str, Any]:
    return {f"{s}.{n}": getattr(getattr(Config(), s) if s else Config(), n) for s, n, _ in _sections()}


def test_leaf_walk_sees_all_fields() -> None:
    defaults = _leaf_defaults()
    assert "discord.token" in defaults and ".data_dir" in defaults and "retention.finished_jobs_days" in defaults
    assert len(defaults) == 1 + sum(len(dataclasses.fields(c)) for c in
                                    (DiscordConfig, QueueConfig, WebConfig, RetentionConfig, IntakeConfig, TaggerConfig,
                                     ModelsConfig, TrainingConfig, SamplesConfig, RegConfig, ClusterConfig))


def test_samples_section_takes_whole_numbers_as_weights_and_size_0_as_auto(tmp_path: Path) -> None:
    path = _write(tmp_path, '[samples]\nweights = [0, 1]\nseeds = [1, 2]\nsize = 64\nextra_models = ["a/b"]\n')
    samples = load_config(path, env={}).samples
    assert samples.weights == [0.0, 1.0] and all(isinstance(w, float) for w in samples.weights)
    assert samples.seeds == [1, 2] and samples.size == 64 and samples.extra_models == ["a/b"]
    assert Config().samples.size == 0 and Config().samples.auto_after_training


def test_cluster_section_turns_on_the_ray_lane_and_refuses_unknown_backends(tmp_path: Path) -> None:
    cluster = load_config(_write(tmp_path, '[cluster]\nbackend = "ray"\naddress = "10.8.0.1:6379"\n'), env={}).cluster
    assert (cluster.backend, cluster.address, cluster.gpus_per_job, cluster.sdxl_vram_gb) == ("ray", "10.8.0.1:6379",
                                                                                            1.0, 16.0)
    assert Config().cluster.backend == ""   # the default: this machine only
    assert '[cluster] backend must be one of "", "ray"' in _error(_write(tmp_path, '[cluster]\nbackend = "dask"\n'))
