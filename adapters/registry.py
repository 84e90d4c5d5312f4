"""The adapter registry: versioned folders, one active version per adapter name, stable integer ids.

    <adapters dir>/<name>/v<k>/     the PEFT adapter files, card.json and registry_id

The files live in a directory that every instance and `llm-serve` replica can read (NEWSRANK_ADAPTERS_DIR, a
shared volume at scale); which versions exist, their ids and the active pointer live in the feedback store,
so an activation or a rollback through one instance is what every instance serves from its next request.
Integer ids never change or get reused (vLLM's LoRARequest needs them).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from core.errors import InvalidInput, NotFound
from core.records import ADAPTER_ID_FILE, AdapterVersion
from core.stores import FeedbackStore

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LEGACY_INDEX = "registry.json"  # where versions and ids were kept before the feedback store held them


def parse_reference(reference: str) -> tuple[str, int | None]:
    """'clicks' → ('clicks', None: the active version); 'clicks@3' → ('clicks', 3)."""
    name, _, version = reference.partition("@")
    if not NAME.match(name) or (version and not version.isdigit()):
        raise InvalidInput(f"bad adapter reference {reference!r}; expected NAME or NAME@VERSION")
    return name, int(version) if version else None


class AdapterRegistry:
    def __init__(self, root: Path, store: FeedbackStore, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.store = store
        self.clock = clock
        self._import_legacy_index()

    # -- reading ------------------------------------------------------------------------------------------
    def versions(self, name: str | None = None) -> list[AdapterVersion]:
        return [replace(v, path=self.root / v.path) for v in self.store.adapter_versions(name)]

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
        self.root.mkdir(parents=True, exist_ok=True)
        # copy beside the target first: the registry's transaction only renames, so it stays short, and a
        # crash never leaves a half-copied version
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".publish-"))
        try:
            shutil.copytree(folder, staging, dirs_exist_ok=True)

            def place(version: int, adapter_id: int) -> None:
                (staging / ADAPTER_ID_FILE).write_text(str(adapter_id))
                target = self.root / name / f"v{version}"
                if target.exists():  # left by a publish whose registration did not commit
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(target)

            version, _ = self.store.add_adapter_version(name, place, activate, self.clock())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.resolve(f"{name}@{version}")

    def activate(self, reference: str) -> AdapterVersion:
        name, version = parse_reference(reference)
        self.store.activate_adapter(name, version)
        return self.resolve(name)

    def rollback(self, name: str) -> AdapterVersion:
        """Make the previously active version active again."""
        parse_reference(name)
        self.store.rollback_adapter(name)
        return self.resolve(name)

    def _import_legacy_index(self) -> None:
        """Versions an older newsrank listed in <root>/registry.json move into the store, once, with their ids."""
        index_path = self.root / LEGACY_INDEX
        if not index_path.is_file() or self.store.adapter_versions():
            return
        index = json.loads(index_path.read_text())
        for key, adapter_id in sorted(index["ids"].items(), key=lambda kv: kv[1]):  # in publishing order
            name, version = parse_reference(key)
            folder = self.root / name / f"v{version}"

            def place(new_version: int, _: int, folder: Path = folder, version: int | None = version,
                      adapter_id: int = adapter_id) -> None:  # fmt: skip
                if new_version != version:
                    raise InvalidInput(f"{index_path}: the versions of {folder.parent.name} are not 1, 2, ...")
                (folder / ADAPTER_ID_FILE).write_text(str(adapter_id))

            self.store.add_adapter_version(name, place, activate=False, now=self.clock(), adapter_id=adapter_id)
        for name, entry in sorted(index["names"].items()):
            for version in entry["history"]:
                self.store.activate_adapter(name, version)
        index_path.rename(index_path.with_suffix(".json.imported"))
