"""The packages form layers: core imports nothing of the project, and no package imports back up into one
that imports it (read from the source, so a lazy import inside a function counts too).

    core ← config ← store, retrieval, llm ← feed ← chat, evaluation ← adapters ← serve
    (prompts is package data: the templates llm/prompts.py loads)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each package and the ones it may import; everything else is a layering error
ALLOWED = {
    "core": set(),
    "prompts": set(),
    "config": {"core"},
    "store": {"core"},
    "retrieval": {"core", "config"},
    "llm": {"core", "config", "prompts"},
    "feed": {"core", "config", "retrieval", "llm", "prompts"},
    "chat": {"core", "config", "llm", "feed"},
    "evaluation": {"core", "config", "retrieval", "llm", "feed"},
    "adapters": {"core", "config", "llm", "feed", "evaluation"},
    "serve": {"core", "config", "store", "retrieval", "llm", "feed", "chat", "evaluation", "adapters", "prompts"},
}
PACKAGES = tuple(ALLOWED)


def imports_of(package: str) -> dict[str, set[str]]:
    """The project packages each module of `package` imports: {module path: {package, ...}}."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & set(PACKAGES)) - {package}
    return found


def test_every_package_of_the_project_has_a_layer():
    """A new top-level package must be placed in the table (else its imports would go unchecked)."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert on_disk == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package: str):
    wrong = {module: sorted(used - ALLOWED[package]) for module, used in imports_of(package).items()}
    assert {m: w for m, w in wrong.items() if w} == {}


def test_the_imports_in_the_code_have_no_cycle():
    """Read from the code, not from the table: the packages' actual imports form no cycle."""
    graph = {package: set().union(*imports_of(package).values()) for package in PACKAGES}

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, f"import cycle: {' -> '.join((*path, package))}"
        for below in graph[package]:
            visit(below, (*path, package))

    for package in PACKAGES:
        visit(package, ())
    assert graph["core"] == set()  # the floor imports nothing of the project
