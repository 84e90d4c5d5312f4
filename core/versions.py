"""Versions of one kind of model file in a folder that every instance shares: NAME/vN<suffix>, and NAME/state.json
with the active version and the ones active before it (for rollback). Learned rankers and towers are kept so;
adapters have a registry of their own (adapters/registry.py), with their trainings' records."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from core.errors import InvalidInput


class Versions:
    kind = "model"  # what the files are, as errors and `newsrank KIND fit` name them
    suffix = ".json"

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []

    def versions(self, name: str) -> list[int]:
        found = (p.name[1 : -len(self.suffix)] for p in (self.root / name).glob(f"v*{self.suffix}"))
        return sorted(int(v) for v in found if v.isdigit())

    def state(self, name: str) -> dict:
        path = self.root / name / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {"active": None, "before": []}

    def publish_with(self, name: str, write: Callable[[Path], object]) -> int:
        """Store a new version, written by `write(path)`, and make it active; returns its number."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput(f"bad {self.kind} name {name!r}: letters, digits, - and _ only")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        version = (self.versions(name) or [0])[-1] + 1
        while True:  # another instance may publish at the same time: never overwrite its version
            try:
                (folder / f"v{version}{self.suffix}").open("x").close()
                break
            except FileExistsError:
                version += 1
        staging = folder / f".v{version}.partial{self.suffix}"
        write(staging)
        os.replace(staging, folder / f"v{version}{self.suffix}")
        self.activate(name, version)
        return version

    def activate(self, name: str, version: int) -> None:
        if version not in self.versions(name):
            raise InvalidInput(f"no {self.kind} {name}@{version}; versions: {self.versions(name)}")
        state = self.state(name)
        if state["active"] != version:
            before = [*state["before"], state["active"]] if state["active"] is not None else state["before"]
            self._write_state(name, {"active": version, "before": before})

    def rollback(self, name: str) -> int:
        state = self.state(name)
        if not state["before"]:
            raise InvalidInput(f"{self.kind} {name} has no earlier active version to go back to")
        version = state["before"][-1]
        self._write_state(name, {"active": version, "before": state["before"][:-1]})
        return version

    def path(self, reference: str) -> tuple[str, Path]:
        """ "NAME" (its active version) or "NAME@N": the version's key and file."""
        name, _, number = reference.partition("@")
        version = int(number) if number.isdigit() else self.state(name)["active"]
        if version is None or version not in self.versions(name):
            raise InvalidInput(f"no {self.kind} {reference!r} under {self.root}: fit one with "
                               f"`newsrank {self.kind} fit`")  # fmt: skip
        return f"{name}@{version}", self.root / name / f"v{version}{self.suffix}"

    def find(self, reference: str) -> tuple[str, Path] | None:
        """`path`'s key and file, or None for a bare NAME with no version yet (what serves it until its first fit
        is the caller's to say: the hand-set weights, the shipped tower)."""
        if "@" not in reference and not self.versions(reference):
            return None
        return self.path(reference)

    def _write_state(self, name: str, state: dict) -> None:
        path = self.root / name / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
