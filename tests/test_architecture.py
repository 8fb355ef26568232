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


def engine_import_graph() -> dict[str, set[str]]:
    """engine module → the engine modules it imports at its top level (TYPE_CHECKING blocks included: a
    circle there is still a circle for a reader). `from package import submodule` depends on the submodule."""
    modules = {}
    for path in (REPO / "engine").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    def imports(body: list[ast.stmt]) -> set[str]:
        deps: set[str] = set()
        for node in body:
            if isinstance(node, ast.If):
                deps |= imports(node.body) | imports(node.orelse)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                deps.update(submodules)
                if len(submodules) < len(node.names):
                    deps.add(node.module)
        return deps

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = imports(ast.parse(path.read_text(encoding="utf-8")).body)
        graph[name] = {dep for dep in deps if dep in modules and dep != name}
    return graph


def test_no_import_circle_in_the_engine() -> None:
    """The facade assembles the services from engine.core; no service imports the facade back."""
    graph, state, circles = engine_import_graph(), {}, []

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                circles.append(" → ".join(path[path.index(dep):] + [dep]) if dep in path else dep)
            elif dep not in state:
                walk(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []
    services = ("engine.core", "engine.curation_api", "engine.training_api", "engine.reg_api")
    assert [s for s in services if "engine.facade" in graph[s]] == []


def test_no_one_reaches_into_another_objects_database_handle() -> None:
    """`x._db` only as `self._db`: services get the database from the core they are handed."""
    found = []
    for package in ("engine", "bot"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr == "_db"
                        and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


def test_test_files_share_helpers_not_each_other() -> None:
    """Shared test code lives in tests/helpers.py (and the fake Discord's helpers), not in another test file."""
    found = [f"{path.relative_to(REPO)} imports {name}"
             for path in sorted((REPO / "tests").glob("*.py"))
             for name in sorted(imported_modules(path)) if name.startswith("tests.test_")]
    assert found == []
