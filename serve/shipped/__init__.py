"""What a new install serves: a LoRA adapter and a learned ranker trained on public MIND clicks, shipped in this
folder with their card (README.md here), installed into the registries on first start.

    adapter/      the PEFT adapter (adapter_config.json, adapter_model.safetensors in fp16, card.json)
    ranker.json   the learned ranker fitted with that adapter's scores (and the tower's match)
    tower.safetensors   the LLM's match of readers and articles (llm/tower.py), its card in its metadata

`NEWSRANK_ADAPTER=none` / `NEWSRANK_TOWER=none` / `NEWSRANK_RANKER=none` serve the zero-shot model and the
hand-set weights instead.
`make default-model` rebuilds both (docs/BENCHMARKS.md has what it measured); `python -m serve.shipped ADAPTER
RANKER` packs a trained adapter folder and a ranker file in here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from adapters.registry import AdapterRegistry
from config.settings import Settings
from core.errors import NotFound
from feed import tower_fit
from feed.learned_ranker import Ranker, RankerRegistry
from llm.tower import Tower

NAME = "mind"  # the name of what ships (NEWSRANK_ADAPTER, NEWSRANK_TOWER and NEWSRANK_RANKER default to it)
FOLDER = files("serve.shipped")
TOWER = "tower.safetensors"


def available(folder: Any = FOLDER) -> bool:
    return (folder / "adapter" / "adapter_config.json").is_file() and (folder / "ranker.json").is_file()


def install(settings: Settings, adapters: AdapterRegistry, folder: Any = FOLDER) -> list[str]:
    """Publish the shipped adapter and ranker into the registries when the settings serve them by their shipped
    name and the registries have no version of that name yet (a platform's own versions are never touched).
    The ranker's LLM fit is keyed on the installed adapter's version. Returns what was installed ("adapter mind@1")."""
    installed: list[str] = []
    if not available(folder):
        return installed
    if settings.adapter == NAME and not adapters.versions(NAME):
        with as_file(folder / "adapter") as adapter:
            installed.append(f"adapter {adapters.publish(NAME, Path(adapter)).key}")
    rankers = RankerRegistry(settings.adapters_path / "rankers")
    if settings.ranker == NAME and not rankers.versions(NAME):
        with as_file(folder / "ranker.json") as path:
            ranker = Ranker.load(Path(path))
        if ranker.scorer and settings.adapter == NAME:
            try:
                model, _, prompt, strategy = ranker.scorer.split("|")
                ranker = replace(ranker, scorer=f"{model}|{adapters.resolve(NAME).key}|{prompt}|{strategy}")
            except (ValueError, NotFound):
                pass  # a scorer it cannot name: the ranker ranks with its fit without the LLM
        installed.append(f"ranker {NAME}@{rankers.publish(NAME, ranker)}")
    return installed


def served(settings: Settings, adapters: AdapterRegistry) -> Settings:
    """The settings a start serves with: the shipped name where nothing ships under it and no version of it is
    registered (a checkout before `make default-model`) serves the zero-shot model and the hand-set weights."""
    unset = {"adapter": None} if settings.adapter == NAME and not adapters.versions(NAME) else {}
    if settings.ranker == NAME and not RankerRegistry(settings.adapters_path / "rankers").versions(NAME):
        unset["ranker"] = None
    return settings.model_copy(update=unset) if unset else settings


def tower(settings: Settings) -> Tower | None:
    """The tower the settings serve: a tower file, a registered tower's active version (`newsrank tower fit`), or
    the shipped one (also for a name with no version yet: its reader keeps storing the readings a first fit
    needs); None for none (or where nothing ships)."""
    if not settings.tower:
        return None
    if tower_fit.is_file_reference(settings.tower):
        return Tower.load(Path(settings.tower))
    if found := tower_fit.registry_of(settings.adapters_path).find(settings.tower):
        return Tower.load(found[1])
    if not (FOLDER / TOWER).is_file():
        return None
    with as_file(FOLDER / TOWER) as path:
        return Tower.load(Path(path))


def pack(adapter: Path, ranker: Path, into: Path | None = None, tower_file: Path | None = None) -> Path:
    """Copy a trained adapter (its tensors as fp16 safetensors), a ranker file and a tower file (if given) in as
    what ships."""
    import torch
    from safetensors.torch import load_file, save_file

    target = Path(into) if into else Path(str(FOLDER))
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".pack-"))
    try:
        (staging / "adapter").mkdir()
        config = json.loads((adapter / "adapter_config.json").read_text())
        if (adapter / "card.json").is_file():
            shutil.copy(adapter / "card.json", staging / "adapter" / "card.json")
            # the base model's name, not the trainer's local path to it
            config["base_model_name_or_path"] = json.loads((adapter / "card.json").read_text())["base_model"]
        (staging / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        tensors = load_file(adapter / "adapter_model.safetensors")
        save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
                  staging / "adapter" / "adapter_model.safetensors")  # fmt: skip
        Ranker.load(ranker).save(staging / "ranker.json")
        if tower_file is not None:
            Tower.load(tower_file).save(staging / TOWER)
        shutil.rmtree(target / "adapter", ignore_errors=True)
        (staging / "adapter").rename(target / "adapter")
        (staging / "ranker.json").rename(target / "ranker.json")
        if tower_file is not None:
            (staging / TOWER).rename(target / TOWER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
