"""The adapter registry: versioned folders, one active version per adapter name, stable integer ids.

    <root>/<name>/v<k>/            the PEFT adapter files and card.json
    <root>/registry.json           {"names": {name: {"active": k, "history": [k, ...]}}, "ids": {"name@k": id}}

Integer ids never change or get reused (vLLM's LoRARequest needs them). `registry.json` is replaced
atomically, so a reader never sees half of it; serving resolves a name to its active version per request.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InvalidInput, NotFound

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    id: int
    path: Path
    active: bool

    @property
    def key(self) -> str:
        """How a backend knows this exact version: name@version."""
        return f"{self.name}@{self.version}"

    def card(self) -> dict[str, Any]:
        card = self.path / "card.json"
        return json.loads(card.read_text()) if card.is_file() else {}


def parse_reference(reference: str) -> tuple[str, int | None]:
    """'clicks' → ('clicks', None: the active version); 'clicks@3' → ('clicks', 3)."""
    name, _, version = reference.partition("@")
    if not NAME.match(name) or (version and not version.isdigit()):
        raise InvalidInput(f"bad adapter reference {reference!r}; expected NAME or NAME@VERSION")
    return name, int(version) if version else None


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    @property
    def _index_path(self) -> Path:
        return self.root / "registry.json"

    def _read(self) -> dict[str, Any]:
        if not self._index_path.is_file():
            return {"names": {}, "ids": {}}
        return json.loads(self._index_path.read_text())

    def _write(self, index: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry-")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._index_path)

    # -- reading ------------------------------------------------------------------------------------------
    def versions(self, name: str | None = None) -> list[AdapterVersion]:
        index = self._read()
        out = []
        for adapter, entry in sorted(index["names"].items()):
            if name is not None and adapter != name:
                continue
            for version in entry["versions"]:
                out.append(
                    AdapterVersion(
                        adapter, version, index["ids"][f"{adapter}@{version}"], self.root / adapter / f"v{version}",
                        version == entry["active"],
                    )
                )  # fmt: skip
        return out

    def resolve(self, reference: str) -> AdapterVersion:
        """The version a reference names: NAME@K exactly, or NAME's active version."""
        name, version = parse_reference(reference)
        known = self.versions(name)
        if not known:
            raise NotFound(f"no adapter named {name!r}")
        for v in known:
            if (version is None and v.active) or v.version == version:
                return v
        raise NotFound(f"adapter {reference!r} has no {'active version' if version is None else 'such version'}")

    # -- writing ------------------------------------------------------------------------------------------
    def publish(self, name: str, folder: Path, activate: bool = True) -> AdapterVersion:
        """Copy a trained adapter folder in as the next version of `name` (and make it active)."""
        parse_reference(name)
        if not (folder / "adapter_config.json").is_file():
            raise InvalidInput(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
        with self._lock:
            index = self._read()
            entry = index["names"].setdefault(name, {"versions": [], "active": None, "history": []})
            version = max(entry["versions"], default=0) + 1
            target = self.root / name / f"v{version}"
            self.root.mkdir(parents=True, exist_ok=True)
            # copy beside the target, then rename: a crash never leaves a half-copied version
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".publish-"))
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
            entry["versions"].append(version)
            index["ids"][f"{name}@{version}"] = max(index["ids"].values(), default=0) + 1
            if activate:
                _activate(entry, version)
            self._write(index)
        return self.resolve(f"{name}@{version}")

    def activate(self, reference: str) -> AdapterVersion:
        name, version = parse_reference(reference)
        with self._lock:
            index = self._read()
            entry = index["names"].get(name)
            if entry is None or (version is not None and version not in entry["versions"]):
                raise NotFound(f"no adapter {reference!r}")
            _activate(entry, version if version is not None else max(entry["versions"]))
            self._write(index)
        return self.resolve(name)

    def rollback(self, name: str) -> AdapterVersion:
        """Make the previously active version active again."""
        with self._lock:
            index = self._read()
            entry = index["names"].get(name)
            if entry is None or len(entry["history"]) < 2:
                raise NotFound(f"adapter {name!r} has no earlier active version to roll back to")
            entry["history"].pop()
            entry["active"] = entry["history"][-1]
            self._write(index)
        return self.resolve(name)


def registered_id(folder: Path) -> int | None:
    """The stable integer id of a version folder (<root>/<name>/v<k>) if a registry holds it, else None."""
    folder = Path(folder)
    index = folder.parent.parent / "registry.json"
    if not folder.name.startswith("v") or not folder.name[1:].isdigit() or not index.is_file():
        return None
    return json.loads(index.read_text())["ids"].get(f"{folder.parent.name}@{folder.name[1:]}")


def _activate(entry: dict[str, Any], version: int) -> None:
    if entry["active"] != version:
        entry["active"] = version
        entry["history"].append(version)
