"""The `lorabake` command. Every verb drives the same engine facade as the Discord bot; `--json`
prints machine-readable output for scripts."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bot import cli_curate
from bot.cli_args import ROW_ID, USER_ID
from engine.config import MODEL_FAMILIES, ConfigError, load_config
from engine.core import JobConflict
from engine.errors import Invalid, UserError
from engine.facade import Engine
from engine.intake import IncomingFile
from engine.records import Actor, Job, Project
from engine.scheduler import SchedulerBusy
from engine.training.options import NETWORK_PRESETS

CLI_USER = 0  # projects made from the command line belong to this local user unless --user says otherwise


def _common_options(*, with_defaults: bool) -> argparse.ArgumentParser:
    """--config, --json and --user, accepted before or after a sub-action. Below the first level their
    defaults are suppressed, or an action would overwrite what was typed before it."""
    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=default(None),
                        help="config file (default: ./config.toml if it exists, else built-in defaults)")
    common.add_argument("--json", action="store_true", default=default(False), help="print JSON for scripts")
    common.add_argument("--user", type=USER_ID, default=default(CLI_USER),
                        help="act as this Discord user id (default 0: local)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(with_defaults=True)
    inner = _common_options(with_defaults=False)

    parser = argparse.ArgumentParser(prog="lorabake", description="LoRA training studio for Discord servers")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("run", parents=[common], help="run the Discord bot with its engine and web server")
    verbs.add_parser("demo", parents=[common], help="show the flow on tiny generated models, no Discord needed")

    projects = verbs.add_parser("projects", parents=[common], help="manage projects").add_subparsers(
        dest="action", required=True)
    projects.add_parser("list", parents=[inner], help="list projects")
    new = projects.add_parser("new", parents=[inner], help="create a project")
    new.add_argument("name")
    new.add_argument("trigger")
    new.add_argument("class_name", metavar="class")
    for action in ("info", "delete"):
        projects.add_parser(action, parents=[inner], help=f"{action} a project").add_argument("name")
    rename = projects.add_parser("rename", parents=[inner], help="rename a project")
    rename.add_argument("name")
    rename.add_argument("new_name")

    queue = verbs.add_parser("queue", parents=[common], help="queued and running jobs")
    queue.add_argument("--all", action="store_true", help="everyone's jobs, not only --user's")
    cancel = verbs.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job", type=ROW_ID)
    verbs.add_parser("check", parents=[common], help="run the system check job here and print what it finds")

    images = verbs.add_parser("images", parents=[common], help="a project's pictures").add_subparsers(
        dest="action", required=True)
    add = images.add_parser("add", parents=[inner], help="add pictures or zips of pictures to a project")
    add.add_argument("project")
    add.add_argument("files", nargs="+", type=Path)
    add.add_argument("--reg", action="store_true", help="add them as regularization pictures")
    tag = verbs.add_parser("tag", parents=[common], help="caption a project's pictures with the WD14 tagger")
    tag.add_argument("project")
    tag.add_argument("--general-threshold", type=float, default=None)
    tag.add_argument("--character-threshold", type=float, default=None)
    tags = verbs.add_parser("tags", parents=[common], help="a project's tags, most common first")
    tags.add_argument("project")
    tags.add_argument("--reg", action="store_true", help="the regularization set's tags")
    reg = verbs.add_parser("reg", parents=[common],
                           help="render regularization (class) pictures with the base model, then tag them")
    reg.add_argument("project")
    reg.add_argument("--count", type=int, default=None,
                     help="how many pictures (default: [reg] count); asking again only adds the missing ones")
    reg.add_argument("--prompt", default=None,
                     help="instead of the project's class, e.g. 'man, outdoors' ([reg] quality_prompt goes first)")
    cli_curate.add_parser(verbs, common, inner)
    train = verbs.add_parser("train", parents=[common], help="plan and run a LoRA training")
    train.add_argument("project")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a training option (repeatable), e.g. --set epochs=8")
    train.add_argument("--network", choices=tuple(NETWORK_PRESETS), default=None,
                       help="the LoRA type: lora (kohya's default modules) or locon (LoRA on the 3×3 convolutions "
                            "too, kohya-colab's LoCon values); --set options win over it")
    train.add_argument("--plan-only", action="store_true", help="show the plan, do not train")
    for needs_model in (reg, train):
        needs_model.add_argument("--model", choices=MODEL_FAMILIES, default=None,
                            help="the base model family ([models] sd15 / sdxl); default: [models] default_family")

    dev = verbs.add_parser("dev", parents=[common], help="developer tools").add_subparsers(
        dest="action", required=True)
    tiny = dev.add_parser("tiny-models", parents=[inner], help="write tiny SD1.5/SDXL pipelines and a tagger")
    tiny.add_argument("dir", type=Path)
    toy = dev.add_parser("toy-world", parents=[inner],
                         help="the toy world: a base model and tagger that learn on a CPU")
    toy_actions = toy.add_subparsers(dest="toy_action")
    toy_actions.add_parser("show", parents=[inner], help="where the shipped toy models are, and how to use them")
    toy_build = toy_actions.add_parser("build", parents=[inner], help="train the toy base model and tagger (~30 min)")
    toy_build.add_argument("dir", type=Path)
    toy_build.add_argument("--seed", type=int, default=0)
    toy_build.add_argument("--quick", action="store_true", help="seconds instead of minutes; the models learn little")
    toy_pictures = toy_actions.add_parser("pictures", parents=[inner],
                                          help="pictures of the toy character XingBar, ready to upload")
    toy_pictures.add_argument("dir", type=Path)
    toy_pictures.add_argument("--count", type=int, default=12, choices=range(1, 101), metavar="1-100")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config_path = args.config or (Path("config.toml") if Path("config.toml").is_file() else None)
        config = load_config(config_path)
        return asyncio.run(_dispatch(args, config))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except UserError as error:
        _fail(args, str(error))
        return 1
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": message}))
    else:
        print(f"error: {message}", file=sys.stderr)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


async def _dispatch(args: argparse.Namespace, config) -> int:
    if args.verb == "run":
        return await _run(config)
    if args.verb == "dev":
        return _toy_world(args) if args.action == "toy-world" else _tiny_models(args)
    if args.verb == "demo":
        from bot.demo import run_demo

        return await run_demo(config, as_json=args.json)
    handler = _curate if args.verb == "curate" else _ENGINE_VERBS[(args.verb, getattr(args, "action", None))]
    engine = await Engine.open(config)
    try:
        return await handler(engine, args)
    finally:
        await engine.close()


async def _run(config) -> int:
    import discord

    from bot.app import run_service

    if not config.discord.token:
        print("No Discord token: set LORABAKE_DISCORD_TOKEN (or [discord] token in config.toml).\n"
              "To see lorabake work without Discord, run: lorabake demo", file=sys.stderr)
        return 2
    try:
        await run_service(config)
    except discord.LoginFailure:
        print("Discord refused the bot token: copy it again from the Developer Portal (Bot → Reset Token).",
              file=sys.stderr)
        return 2
    except discord.PrivilegedIntentsRequired:
        print("Discord refused a privileged intent the bot asked for.", file=sys.stderr)
        return 2
    return 0


def _tiny_models(args: argparse.Namespace) -> int:
    from engine.devtools.tiny_models import write_tiny_models

    paths = write_tiny_models(args.dir)
    data = {"sd15": str(paths.sd15), "sdxl": str(paths.sdxl), "tagger": str(paths.tagger)}
    _emit(args, data, "\n".join(f"{key:7} {value}" for key, value in data.items()))
    return 0


def _toy_world(args: argparse.Namespace) -> int:
    from engine.devtools import toy_world

    if args.toy_action == "build":
        from engine.devtools.toy_world.build import BuildSettings, build

        settings = BuildSettings.quick() if args.quick else BuildSettings()
        paths = build(args.dir, dataclasses.replace(settings, seed=args.seed), progress=not args.json,
                      log=(lambda _: None) if args.json else print)
        _emit(args, {"sd15": str(paths.sd15), "tagger": str(paths.tagger), "report": str(paths.report)}, "")
        return 0
    if args.toy_action == "pictures":
        files = toy_world.write_character_pictures(args.dir, args.count)
        _emit(args, {"character": toy_world.CHARACTER.name, "files": [str(f) for f in files]},
              f"{len(files)} pictures of {toy_world.CHARACTER.name} ({', '.join(toy_world.CHARACTER.traits())}) "
              f"in {args.dir}")
        return 0
    paths = toy_world.shipped()
    data = {"sd15": str(paths.sd15), "tagger": str(paths.tagger), "report": str(paths.report)}
    _emit(args, data, "The toy world ships with lorabake. To try the whole bot on a CPU box, put this in "
                      f"config.toml:\n\n[models]\nsd15 = \"{paths.sd15}\"\n\n[tagger]\nmodel = \"{paths.tagger}\"\n\n"
                      f"[reg]\nguidance = {toy_world.GUIDANCE:g}\n\n[samples]\nguidance = {toy_world.GUIDANCE:g}\n\n"
                      "then upload the pictures that `lorabake dev toy-world pictures DIR` writes.")
    return 0


def _project_text(project: Project) -> str:
    return (f"{project.name}: trigger {project.trigger}, class {project.class_name}, "
            f"{project.train_images} images, {project.reg_images} reg images, {project.active_jobs} active jobs\n"
            f"  {project.path}")


def _job_text(job: Job) -> str:
    where = f" [{job.project_name}]" if job.project_name else ""
    place = f" #{job.position} in {job.lane} queue" if job.position else ""
    state = "interrupted (no lorabake process runs it; it goes on when one starts)" if job.interrupted else job.state
    return f"#{job.id} {job.title}{where}: {state}{place} (user {job.user_id})" + (
        f" — {job.error}" if job.error else "")


def _actor(args: argparse.Namespace) -> Actor:
    return Actor(args.user, "cli", is_admin=True)


async def _projects_list(engine: Engine, args: argparse.Namespace) -> int:
    projects = await engine.list_projects(_actor(args))
    _emit(args, [p.to_dict() for p in projects], "\n".join(map(_project_text, projects)) or "no projects")
    return 0


async def _projects_new(engine: Engine, args: argparse.Namespace) -> int:
    project = await engine.create_project(_actor(args), args.name, args.trigger, args.class_name)
    _emit(args, project.to_dict(), f"created {_project_text(project)}")
    return 0


async def _projects_info(engine: Engine, args: argparse.Namespace) -> int:
    project = await engine.get_project(_actor(args), args.name)
    _emit(args, project.to_dict(), _project_text(project))
    return 0


async def _projects_rename(engine: Engine, args: argparse.Namespace) -> int:
    project = await engine.rename_project(_actor(args), args.name, args.new_name)
    _emit(args, project.to_dict(), f"renamed: {_project_text(project)}")
    return 0


async def _projects_delete(engine: Engine, args: argparse.Namespace) -> int:
    project = await engine.delete_project(_actor(args), args.name)
    _emit(args, project.to_dict(), f"deleted {project.name} and its files")
    return 0


async def _queue(engine: Engine, args: argparse.Namespace) -> int:
    jobs = await engine.jobs(None if args.all else _actor(args))
    _emit(args, [job.to_dict() for job in jobs], "\n".join(map(_job_text, jobs)) or "nothing queued or running")
    return 0


async def _cancel(engine: Engine, args: argparse.Namespace) -> int:
    job = await engine.cancel(_actor(args), args.job)
    _emit(args, job.to_dict(), f"cancelled {_job_text(job)}")
    return 0


async def _check(engine: Engine, args: argparse.Namespace) -> int:
    job = await engine.run_here(lambda: engine.enqueue(_actor(args), "check"))
    _emit(args, job.to_dict(), "\n".join(f"{key}: {value}" for key, value in (job.result or {}).items())
          or _job_text(job))
    return 0 if job.state == "done" else 1


async def _images_add(engine: Engine, args: argparse.Namespace) -> int:
    files = []
    for path in args.files:
        if not path.is_file():
            raise Invalid(f"{path}: no such file")
        files.append(IncomingFile(path.name, path.read_bytes()))
    report = await engine.add_images(_actor(args), args.project, files, "reg" if args.reg else "train")
    data = {"accepted": [asdict(item) for item in report.accepted],
            "rejected": [asdict(item) for item in report.rejected]}
    lines = [f"added {item.name} as {item.filename}" + (f" ({', '.join(item.notes)})" if item.notes else "")
             for item in report.accepted] + [f"refused {item.name}: {item.reason}" for item in report.rejected]
    _emit(args, data, "\n".join(lines + [report.summary()]))
    return 0 if report.accepted or not report.rejected else 1


async def _run_or_queue(engine: Engine, args: argparse.Namespace, start: Callable[[], Awaitable[Job]],
                        what: str) -> int:
    """Runs the job here and prints how it ended; while a bot runs jobs from the same data folder, queues
    it for that bot instead. When the project already has such a job (one a crash interrupted, say), that
    one is run and waited for instead of queuing a second; a job of another kind that would write the same
    project is a refusal (exit 1)."""
    said: list[str] = []
    try:
        try:
            jobs = await engine.run_chain_here(start)
        finally:
            said += [f"found {_job_text(job)}" for job in engine.recovered]
    except SchedulerBusy:
        job = await start()  # the running bot picks it up
        _emit(args, job.to_dict(), f"queued as job #{job.id}; the running bot will {what}")
        return 0
    except JobConflict as conflict:
        if conflict.job.kind != args.verb:
            raise
        said.append(f"job #{conflict.job.id} ({conflict.job.title} of {conflict.job.project_name}) was already "
                    "queued: running that one here instead of starting another")
        jobs = await engine.follow_here(conflict.job.id)
    # A training is followed by its sample grids: the chain is shown whole.
    data = {**jobs[0].to_dict(), **({"follow_ups": [job.to_dict() for job in jobs[1:]]} if jobs[1:] else {}),
            **({"notes": said} if said else {})}
    _emit(args, data, "\n".join(said + [_job_text(job) + ("\n" + json.dumps(job.result, indent=2) if job.result
                                                          else "") for job in jobs]))
    return 0 if all(job.state == "done" for job in jobs) else 1


async def _tag(engine: Engine, args: argparse.Namespace) -> int:
    return await _run_or_queue(engine, args, lambda: engine.tag(
        _actor(args), args.project, general_threshold=args.general_threshold,
        character_threshold=args.character_threshold), "tag the pictures")


async def _reg(engine: Engine, args: argparse.Namespace) -> int:
    return await _run_or_queue(engine, args, lambda: engine.reg.start(
        _actor(args), args.project, count=args.count, prompt=args.prompt, family=args.model),
        "render the reg pictures")


async def _tags(engine: Engine, args: argparse.Namespace) -> int:
    stats = await engine.tag_stats(_actor(args), args.project, "reg" if args.reg else "train")
    _emit(args, [asdict(item) for item in stats],
          "\n".join(f"{item.count:5d} {item.share:6.1%}  {item.tag}" for item in stats) or "no captions yet")
    return 0


async def _train(engine: Engine, args: argparse.Namespace) -> int:
    overrides = {"network": args.network} if args.network else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise Invalid(f"--set {item}: use KEY=VALUE, e.g. --set epochs=8")
        overrides[key.strip()] = value.strip()
    planned = await engine.training.plan(_actor(args), args.project, overrides, family=args.model)
    plan_text = "\n".join([*planned.plan.explanation, *(
        f"A {which} picture is trained on: {caption or '(no caption)'}"
        for which, caption in (("training", planned.example_captions.get("train")),
                               ("reg", planned.example_captions.get("reg"))) if caption is not None)])
    if args.plan_only:
        _emit(args, {"plan": asdict(planned.plan), "options": planned.options.to_dict(),
                     "example_captions": planned.example_captions}, plan_text)
        return 0

    def start() -> Awaitable[Job]:
        return engine.training.start(_actor(args), args.project, overrides, family=args.model)

    if not args.json:
        print(plan_text)
    return await _run_or_queue(engine, args, start, "train the LoRA")


async def _curate(engine: Engine, args: argparse.Namespace) -> int:
    data, text = await cli_curate.run(engine, _actor(args), args)
    _emit(args, data, text)
    return 0


_ENGINE_VERBS: dict[tuple[str, str | None], Callable[[Engine, argparse.Namespace], Awaitable[int]]] = {
    ("projects", "list"): _projects_list,
    ("projects", "new"): _projects_new,
    ("projects", "info"): _projects_info,
    ("projects", "rename"): _projects_rename,
    ("projects", "delete"): _projects_delete,
    ("queue", None): _queue,
    ("cancel", None): _cancel,
    ("check", None): _check,
    ("images", "add"): _images_add,
    ("tag", None): _tag,
    ("reg", None): _reg,
    ("tags", None): _tags,
    ("train", None): _train,
}


if __name__ == "__main__":
    sys.exit(main())
