"""The packages form layers: core imports nothing of the project, and no package imports back up into one
that imports it (read from the source, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "store", "retrieval", "agent", "adapters", "serve", "prompts")
# each package and the ones it may import; everything else is a layering error
ALLOWED = {
    "core": set(),
    "prompts": set(),
    "store": {"core"},
    "retrieval": {"core"},
    "agent": {"core", "retrieval", "prompts"},
    "adapters": {"core", "agent", "retrieval"},
    "serve": {"core", "store", "retrieval", "agent", "adapters", "prompts"},
}


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


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package: str):
    wrong = {module: sorted(used - ALLOWED[package]) for module, used in imports_of(package).items()}
    assert {m: w for m, w in wrong.items() if w} == {}


def test_the_allowed_imports_have_no_cycle():
    seen: dict[str, int] = {}

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, f"import cycle: {' -> '.join((*path, package))}"
        for below in ALLOWED[package]:
            visit(below, (*path, package))
        seen[package] = 1

    for package in PACKAGES:
        visit(package, ())
    assert set(seen) == set(PACKAGES)
