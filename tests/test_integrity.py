"""Integrity over HTTP on a real server: no client key can freeze the service, flood the scoring queue, write
past a reader's erasure, or date events in the future (docs/RELIABILITY.md, "Bounds"). The model is a stub
`vllm serve` replica that can be stalled (tests/test_openai_backend.py), so what a stalled model does to the
service is seen without waiting on a real one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from config.settings import Settings
from core.records import ScoringTask
from llm.backends.tokenizer import ModelTokenizer
from retrieval.store import ChromaArticleStore, chroma_client
from serve.app import create_app
from serve.service import Newsrank, make_backend
from store import open_store
from tests.conftest import CORPUS, MODEL_CACHE, free_port
from tests.test_openai_backend import Replica

ADMIN, TENANT_A, TENANT_B = "admin-key-0123456789", "tenant-a-key-0123456789", "tenant-b-key-0123456789"
KEYS = [
    {"name": "admin", "key": ADMIN, "scope": "admin"},
    {"name": "a", "key": TENANT_A, "scope": "client", "users": ["a-*"]},
    {"name": "b", "key": TENANT_B, "scope": "client", "users": ["b-*"]},
]


class Stalling(Replica):
    """The stub replica, stalled while `stalled` is set: a request waits until it is cleared."""

    def __init__(self, answer_ids: tuple[int, int]) -> None:
        self.stalled = threading.Event()
        self.waiting = 0
        super().__init__(answer_ids)

    def reply(self, body: dict) -> tuple[int, dict]:
        self.waiting += 1
        while self.stalled.is_set():
            time.sleep(0.05)
        self.waiting -= 1
        return super().reply(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedder) -> Iterator[tuple[str, Newsrank, Stalling]]:
    folder = tmp_path_factory.mktemp("integrity")
    tokenizer = ModelTokenizer("smollm2-135m", MODEL_CACHE)
    tokenizer.tokenizer  # noqa: B018  (loading it reads the answer tokens' ids)
    replica = Stalling(tokenizer.answer_ids)
    settings = Settings(
        data_dir=folder / "data", model_cache=MODEL_CACHE, backend="openai", openai_urls=[replica.url],
        openai_timeout=60, openai_retries=0, scorer_threads=0, candidates=8, llm_concurrency=4, llm_queue=8,
        llm_wait_seconds=90, scoring_queue_max=40, feeds_per_reader_per_minute=30, api_keys=json.dumps(KEYS),
        position_explore_share=0.0, pseudonym_secret="integrity-tests-secret-0123",
    )  # fmt: skip
    articles = ChromaArticleStore(chroma_client(folder / "chroma"), embedder, "integrity")
    articles.upsert(CORPUS)
    service = Newsrank(settings, articles, open_store(settings.store_url), make_backend(settings))
    server = uvicorn.Server(uvicorn.Config(create_app(newsrank=service), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", service, replica
    replica.stalled.clear()
    server.should_exit = True
    thread.join(30)


def call(base: str, key: str, method: str, path: str, body=None, **headers) -> httpx.Response:
    return httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {key}", **headers},
                         timeout=60)  # fmt: skip


def clicks(*readers: str, article: str = "s1", **extra) -> dict:
    return {"events": [{"user_id": r, "article_id": article, "type": "click", **extra} for r in readers]}


def test_a_stalled_model_and_one_keys_fresh_feeds_leave_everyone_elses_requests_fast(served):
    base, _, replica = served
    for reader in ("a-heavy", "b-reader"):
        assert call(base, TENANT_A if reader.startswith("a") else TENANT_B, "POST", "/v1/events",
                    clicks(reader, article="s2")).status_code == 201  # fmt: skip
    replica.stalled.set()
    try:
        with ThreadPoolExecutor(12) as pool:
            fresh = [pool.submit(call, base, TENANT_A, "POST", "/v1/feed", {"user_id": "a-heavy", "fresh": True})
                     for _ in range(12)]  # fmt: skip
            time.sleep(1.0)  # the key's share is at the model or in line; the rest were turned away at once
            admitted = [f for f in fresh if not f.done()]
            turned_away = [f.result() for f in fresh if f.done()]
            assert len(turned_away) == 6 and {r.status_code for r in turned_away} == {429}
            assert "share" in turned_away[0].json()["detail"] and turned_away[0].headers["retry-after"]
            # another tenant's plain feeds, events and the probe do not wait on the stalled model
            latencies = []
            for n in range(8):
                for method, path, body in (("POST", "/v1/feed", {"user_id": "b-reader", "explain": False}),
                                           ("POST", "/v1/events", clicks("b-reader", article=f"s{1 + n % 4}")),
                                           ("GET", "/readyz", None)):  # fmt: skip
                    started = time.perf_counter()
                    answer = call(base, TENANT_B, method, path, body)
                    latencies.append(time.perf_counter() - started)
                    assert answer.status_code in (200, 201), answer.text
            assert max(latencies) < 2.0, sorted(latencies)[-5:]
            assert not any(f.done() for f in admitted)  # the admitted ones still wait for the model
            replica.stalled.clear()
            served_now = [f.result() for f in admitted]
        assert all(r.status_code == 200 for r in served_now), [r.text for r in served_now]
    finally:
        replica.stalled.clear()


def test_work_in_flight_writes_nothing_after_an_erasure(served):
    base, service, replica = served
    assert call(base, TENANT_A, "POST", "/v1/events", clicks("a-gone", article="s3")).status_code == 201
    replica.stalled.set()
    try:
        with ThreadPoolExecutor(1) as pool:
            feed = pool.submit(call, base, TENANT_A, "POST", "/v1/feed", {"user_id": "a-gone", "fresh": True})
            deadline = time.monotonic() + 10
            while not replica.waiting and time.monotonic() < deadline:  # the feed is at the model
                time.sleep(0.05)
            assert replica.waiting
            erased = call(base, ADMIN, "DELETE", "/v1/users/a-gone")
            assert erased.status_code == 200, erased.text
            replica.stalled.clear()
            assert feed.result().status_code == 200  # the reader got their feed; nothing of it was kept
    finally:
        replica.stalled.clear()
    assert not service.feedback.known_user("a-gone")
    assert call(base, ADMIN, "GET", "/v1/users/a-gone/export").status_code == 404
    assert call(base, ADMIN, "DELETE", "/v1/users/a-gone").status_code == 404
    refused = call(base, TENANT_A, "POST", "/v1/events", clicks("a-gone", article="s3"))
    assert refused.status_code == 409 and "erased" in refused.json()["detail"]


def test_one_keys_flood_of_readers_never_drops_another_keys_waiting_work(served):
    base, service, _ = served
    assert call(base, TENANT_B, "POST", "/v1/events", clicks("b-waiting", article="s4")).status_code == 201
    flood = clicks(*(f"a-bot{n}" for n in range(150)), article="s1")
    assert call(base, TENANT_A, "POST", "/v1/events", flood).status_code == 201
    waiting = [t.subject for t in waiting_tasks(service)]
    assert "b-waiting" in waiting and len(waiting) == 40  # the bound held, and the flood lost its own tasks
    # and the workers serve the keys in turn, not the newest readers (the flood's) first
    owners = [service.feedback.claim_scoring("w", service.clock() + i, 600).owner for i in range(2)]
    assert len(set(owners)) == 2, owners


def waiting_tasks(service: Newsrank) -> list[ScoringTask]:
    with service.feedback.transaction() as tx:
        rows = tx.rows("SELECT kind, subject, priority, requests, requested_at, owner FROM scoring_queue")
    return [ScoringTask(**r) for r in rows]


def test_client_input_that_would_bend_what_is_learned_is_refused(served):
    base, _, _ = served
    future = clicks("b-time", article="s1", ts="2099-01-01T00:00:00Z")
    late = call(base, TENANT_B, "POST", "/v1/events", future)
    assert late.status_code == 400 and "after the server's time" in late.json()["detail"]
    nul = {"events": [{"user_id": "b-talk", "article_id": "s1", "type": "comment", "text": "fine\u0000then"}]}
    assert call(base, TENANT_B, "POST", "/v1/events", nul).status_code == 400
    first = call(base, TENANT_B, "POST", "/v1/events", clicks("b-key", article="s1"), **{"Idempotency-Key": "batch-1"})
    again = call(base, TENANT_B, "POST", "/v1/events", clicks("b-key", article="s1"), **{"Idempotency-Key": "batch-1"})
    other = call(base, TENANT_B, "POST", "/v1/events", clicks("b-key", article="s2"), **{"Idempotency-Key": "batch-1"})
    assert (first.json(), again.json()) == ({"stored": 1, "replayed": False}, {"stored": 0, "replayed": True})
    assert other.status_code == 409 and "another batch" in other.json()["detail"]
    # the same key name under another client is that client's own
    assert call(base, TENANT_A, "POST", "/v1/events", clicks("a-key", article="s2"),
                **{"Idempotency-Key": "batch-1"}).json() == {"stored": 1, "replayed": False}  # fmt: skip
    # an event that names a feed must name an item that feed showed
    feed = call(base, TENANT_B, "POST", "/v1/feed", {"user_id": "b-key", "k": 3, "explain": False}).json()
    shown = {i["article_id"] for i in feed["items"]}
    unshown = next(a.id for a in CORPUS if a.id not in shown)
    wrong = clicks("b-key", article=unshown, ranking_id=feed["ranking_id"])
    assert call(base, TENANT_B, "POST", "/v1/events", wrong).status_code == 400
    likes = {"events": [{"user_id": "b-key", "article_id": next(iter(shown)), "type": "like",
                         "ranking_id": feed["ranking_id"]}] * 20}  # fmt: skip
    assert call(base, TENANT_B, "POST", "/v1/events", likes).json()["stored"] == 1  # one like of one item


def test_feeds_are_metered_per_reader(served):
    base, _, _ = served
    answers = [call(base, TENANT_B, "POST", "/v1/feed", {"user_id": "b-meter", "explain": False}).status_code
               for _ in range(40)]  # fmt: skip
    assert 30 <= answers.count(200) <= 33 and answers[-1] == 429  # 30 a minute (and what refills meanwhile)
