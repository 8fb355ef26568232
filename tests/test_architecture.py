"""The layering DESIGN §2 asks for, checked on the source: bot → engine → storage. The bot never imports
storage or the heavy ML libraries (they live in the engine's worker processes), the engine never imports
discord, and starting the bot or a CLI verb does not load torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "peft", "onnxruntime")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}"
            for path in sorted((REPO / package).rglob("*.py"))
            for name in sorted(imported_modules(path))
            if name.split(".")[0] in forbidden]


def test_the_bot_imports_neither_storage_nor_ml_libraries() -> None:
    assert offenders("bot", ("storage", *HEAVY)) == []


@pytest.mark.parametrize("package", ["engine", "storage"])
def test_engine_and_storage_do_not_know_discord(package: str) -> None:
    assert offenders(package, ("discord", "bot")) == []


def test_starting_the_bot_or_the_cli_does_not_load_torch() -> None:
    probe = ("import sys, bot.client, bot.cli, bot.demo; "
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", "the bot process should stay light; ML code runs in workers"


def test_sql_lives_in_storage() -> None:
    """Statements are written in storage/ only: the engine and the bot call its functions by name."""
    import re

    statement = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)\s""")
    found = [f"{path.relative_to(REPO)}:{number}"
             for package in ("engine", "bot") for path in sorted((REPO / package).rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if statement.search(line)]
    assert found == []
