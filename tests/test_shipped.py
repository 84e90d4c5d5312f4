"""What a new install serves: the adapter and ranker that ship in serve/shipped, installed into the registries on
first start, and named by every feed's record."""

from __future__ import annotations

import json

import pytest

from adapters.registry import AdapterRegistry
from config.settings import Settings
from core.records import Event, Signals
from feed import learned_ranker
from feed.recommender import FeedRequest
from serve import shipped
from serve.service import Newsrank
from tests.conftest import MODEL_CACHE, NOW, random_lora


def a_ranker(scorer: str) -> learned_ranker.Ranker:
    signals = [Signals(relevance=r / 10, similarity=(r % 3) / 3, ctr=(r % 5) / 5) for r in range(10)]
    return learned_ranker.fit(signals, [5] * 10, [int(r >= 6) for r in range(10)], [True] * 10, scorer)


def test_packing_keeps_the_adapter_in_fp16_and_installing_publishes_both_once(tmp_path, feedback):
    from safetensors.torch import load_file

    trained = random_lora(tmp_path / "trained", seed=3)
    a_ranker("smollm2-135m|curve@1|relevance.v2+candidate.v3:title+abstract+profile.v1|pointwise").save(
        tmp_path / "ranker.json"
    )
    (tmp_path / "ship").mkdir()
    folder = shipped.pack(trained, tmp_path / "ranker.json", into=tmp_path / "ship")
    tensors = load_file(folder / "adapter" / "adapter_model.safetensors")
    assert tensors and {str(t.dtype) for t in tensors.values()} == {"torch.float16"}
    assert (folder / "ranker.json").is_file() and json.loads((folder / "adapter" / "adapter_config.json").read_text())

    settings = Settings(data_dir=tmp_path / "data", adapter="mind", ranker="mind")
    adapters = AdapterRegistry(settings.adapters_path, feedback)
    assert shipped.install(settings, adapters, folder) == ["adapter mind@1", "ranker mind@1"]
    assert shipped.install(settings, adapters, folder) == []  # installed once: a platform's versions stay theirs
    rankers = learned_ranker.RankerRegistry(settings.adapters_path / "rankers")
    installed = learned_ranker.Ranker.load(rankers.path("mind")[1])
    assert installed.scorer.split("|")[1] == "mind@1"  # its LLM fit is keyed on the installed adapter
    off = Settings(data_dir=tmp_path / "off", adapter=None, ranker=None)
    assert shipped.install(off, AdapterRegistry(off.adapters_path, feedback), folder) == []


def test_before_anything_ships_a_start_serves_the_zero_shot_model(tmp_path, feedback, monkeypatch):
    """NEWSRANK_ADAPTER and NEWSRANK_RANKER default to the shipped name; where nothing ships under it and nothing is
    registered under it, a start serves the zero-shot model and the hand-set weights instead of refusing."""
    settings = Settings(data_dir=tmp_path / "data", adapter="mind", ranker="mind")
    adapters = AdapterRegistry(settings.adapters_path, feedback)
    bare = shipped.served(settings, adapters)
    assert (bare.adapter, bare.ranker) == (None, None)
    a_ranker("smollm2-135m|curve@1|relevance.v2+candidate.v3:title+abstract+profile.v1|pointwise").save(
        tmp_path / "ranker.json"
    )
    (tmp_path / "ship").mkdir()
    folder = shipped.pack(random_lora(tmp_path / "trained", seed=3), tmp_path / "ranker.json", into=tmp_path / "ship")
    shipped.install(settings, adapters, folder)
    assert shipped.served(settings, adapters) == settings  # installed: served by its name

    monkeypatch.delenv("NEWSRANK_ADAPTER", raising=False)  # a new user's `make serve`: the defaults
    monkeypatch.delenv("NEWSRANK_RANKER", raising=False)
    service = Newsrank.from_settings(Settings(data_dir=tmp_path / "new", model_cache=MODEL_CACHE, scorer_threads=0))
    service.check_configuration()  # starts, whatever serve/shipped holds
    expected = shipped.NAME if shipped.available() else None
    assert (service.settings.adapter, service.settings.ranker) == (expected, expected)


@pytest.mark.skipif(not shipped.available(), reason="serve/shipped holds no adapter and ranker")
def test_a_new_install_serves_the_shipped_adapter_and_ranker(tmp_path, corpus_store, monkeypatch):
    """The defaults (no NEWSRANK_ADAPTER or NEWSRANK_RANKER): the first start installs what ships, and every feed's
    record names the adapter version and the ranker it was made with."""
    for name in ("NEWSRANK_ADAPTER", "NEWSRANK_RANKER", "NEWSRANK_TOWER"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(data_dir=tmp_path / "data", model_cache=MODEL_CACHE, scorer_threads=0, candidates=12)
    assert (settings.adapter, settings.ranker, settings.tower) == (shipped.NAME,) * 3
    service = Newsrank.from_settings(settings)
    assert service.recommender.tower is not None and service.articles.reader is not None  # the shipped tower
    service.articles = corpus_store  # the small test corpus instead of an empty embedded store
    service.recommender.articles = corpus_store
    service.check_configuration()
    service.feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    feed = service.recommend(FeedRequest("fan", k=5, fresh=True))
    record = service.feedback.ranking(feed.ranking_id)
    assert record.adapter == "mind@1" and record.strategy == "pointwise+ranker:mind@1"
    assert {i.relevance_source for i in record.items} == {"llm"}
    _, ranker = service.recommender.learned_ranker()
    assert ranker.fit_for(service.recommender.scorer("mind@1")) is ranker.with_llm  # the LLM's fit, not the fallback
    assert "match" in ranker.with_llm.columns and record.weights["match"] > 0  # the tower's match, weighed
