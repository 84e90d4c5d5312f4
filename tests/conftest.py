"""Shared fixtures: real Chroma, real SQLite, the real packaged embedder and LLM (loaded once per session)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the tests pin what they serve: the zero-shot model and the hand-set weights unless a test asks for the shipped
# adapter, ranker and tower (tests/test_shipped.py); subprocesses inherit this
os.environ.setdefault("NEWSRANK_ADAPTER", "none")
os.environ.setdefault("NEWSRANK_RANKER", "none")
os.environ.setdefault("NEWSRANK_TOWER", "none")


from config.settings import Settings
from core.records import Article
from retrieval.embed import Embedder
from retrieval.store import ChromaArticleStore, chroma_client
from store.sqlite import SqliteFeedbackStore

NOW = 1_767_000_000.0  # a fixed clock for everything time-dependent
HOUR = 3600.0
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL_CACHE = Path(os.environ.get("NEWSRANK_MODEL_CACHE", "~/.cache/newsrank/models")).expanduser()


def article(article_id: str, title: str, category: str, hours_old: float = 1.0, subcategory: str = "") -> Article:
    return Article(article_id, title, NOW - hours_old * HOUR, category=category, subcategory=subcategory)


# A small corpus with clearly separated topics: sports, politics, technology, food.
CORPUS = [
    article("s1", "Riverton Hawks beat Lakeport Mariners 27-24 in overtime playoff thriller", "sports", 50, "football"),
    article("s2", "Quarterback Dan Miller throws four touchdowns as Hawks clinch division", "sports", 40, "football"),
    article(
        "s3", "Basketball star Jalen Brooks scores 48 points in franchise record night", "sports", 30, "basketball"
    ),
    article("s4", "Hawks coach praises defense before Sunday's championship football game", "sports", 3, "football"),
    article(
        "s5", "Tennis champion Elena Marchetti wins the Coastal Open final in straight sets", "sports", 4, "tennis"
    ),
    article("s6", "Football league approves new overtime rules for the playoffs", "sports", 5, "football"),
    article("s7", "Striker signs record transfer as soccer club rebuilds its attack", "sports", 6, "soccer"),
    article("p1", "Senate passes budget bill after a long night of votes", "politics", 2, "congress"),
    article("p2", "Governor signs law raising the state minimum wage", "politics", 3, "policy"),
    article("p3", "Candidates clash over taxes and schools in the first election debate", "politics", 4, "elections"),
    article("t1", "Chipmaker Novacore unveils a faster processor for laptops", "technology", 2, "chips"),
    article("t2", "Startup releases open-source language model that rivals paid systems", "technology", 3, "ai"),
    article(
        "t3", "Hackers exploit flaw in popular home routers, security firm warns", "technology", 4, "cybersecurity"
    ),
    article("f1", "Ten easy pasta recipes for busy weeknights", "food", 2, "recipes"),
    article("f2", "Chef opens a seaside restaurant serving local oysters", "food", 3, "restaurants"),
    article("f3", "Why sourdough bread is back in fashion at bakeries", "food", 5, "trends"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float) -> None:
    """Poll a server's URL until it answers 200; fail with its output if it dies or never answers."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {seconds} s")


@contextlib.contextmanager
def chroma_server(folder: Path) -> Iterator[str]:
    """A real Chroma server (`chroma run`) on a free loopback port; yields its URL."""
    command = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(command).exists():
        pytest.skip("the chroma command is not installed")
    port = free_port()
    server = subprocess.Popen(
        [command, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/api/v2/heartbeat", server, 60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def random_lora(folder: Path, seed: int) -> Path:
    """A real PEFT adapter for the packaged model with random (non-zero) weights, so it changes scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llm.models import PACKAGED_FOLDER

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(MODEL_CACHE / PACKAGED_FOLDER)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def article_store(embedder: Embedder, tmp_path: Path) -> ChromaArticleStore:
    # a unique collection name: clients in one process share state
    return ChromaArticleStore(chroma_client(tmp_path / "chroma"), embedder, f"articles-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def corpus_store(article_store: ChromaArticleStore) -> ChromaArticleStore:
    article_store.upsert(CORPUS)
    return article_store


@pytest.fixture
def feedback(tmp_path: Path) -> SqliteFeedbackStore:
    store = SqliteFeedbackStore(tmp_path / "feedback.sqlite3")
    yield store
    store.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server of our own: initdb and pg_ctl in a temporary directory, on a free loopback port
    (as the `postgres` user when the tests run as root: initdb refuses root). Yields a function that creates
    a fresh database and returns its URL. `make test` installs PostgreSQL when it is missing."""
    from store.throwaway import NoPostgres, ThrowawayPostgres

    try:
        server = ThrowawayPostgres()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    yield server.new_database
    server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # no background scorer threads: tests run its work where they want it (tests/test_scorer.py); no feed swaps
    # two places at random (tests/test_stats.py tests that)
    return Settings(data_dir=tmp_path / "data", model_cache=MODEL_CACHE, candidates=12, explain_top=3, scorer_threads=0,
                    position_explore_share=0.0)  # fmt: skip


@pytest.fixture(scope="session")
def llm():
    """The real packaged SmolLM2-135M on the transformers backend (converted once into the model cache)."""
    from llm.backends.transformers import TransformersBackend

    backend = TransformersBackend("smollm2-135m", MODEL_CACHE, batch_size=8)
    backend.warm()
    return backend


# One reader's question and a few candidate titles: the backend tests score these on the real model.
SPORTS_QUESTION = (
    "Reader profile:\nInterests: sports, football.\n\nWould this reader click on the article below? Answer Yes or No.\n"
    "Article:\n"
)
SPORTS_TITLES = [
    "Hawks win the football final in overtime (sports, football)",
    "Senate passes the budget bill (politics)",
    "New laptop chip doubles battery life (technology)",
    "Ten easy pasta recipes (food)",
    "Quarterback injured before the playoffs (sports, football)",
]


def sports_requests(backend, adapter: str | None = None, titles=SPORTS_TITLES) -> list:
    """The question as a shared prefix and one title per suffix, in the backend's chat template."""
    from core.llm import ScoreRequest

    prefix, tail = backend.chat_prompt("You pick news articles for one reader.", SPORTS_QUESTION + "\x00").split("\x00")
    return [ScoreRequest(prefix, title + tail, adapter) for title in titles]
