"""What an attacker, a flood and a failing model did to the service, each as a test: the HTTP API through
Litestar's TestClient on real Chroma and real SQLite. The model is the fake where the test is about the edge
(validation, limits, shapes) and a failing wrapper where it is about degrading."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from config.settings import Weights
from core.errors import BackendError, RateLimited
from core.records import MAX_INTERESTS, SIGNALS, Event
from llm.backends.fake import FakeBackend
from serve.app import create_app
from serve.limits import ModelSlots
from serve.service import Newsrank
from tests.conftest import NOW

ADMIN = "admin-key-0123456789abcdef"
FANS = "client-key-fans-0123456789"  # may act for "fan" and "fan-*"
KEYS = [
    {"name": "admin", "key": ADMIN, "scope": "admin"},
    {"name": "fans-app", "key": FANS, "scope": "client", "users": ["fan", "fan-*"]},
]


def auth(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Failing(FakeBackend):
    """The fake model, failing on the calls named (as a backend that went away does)."""

    def __init__(self, fail: set[str]) -> None:
        super().__init__()
        self.fail = fail

    def score(self, requests):
        if "score" in self.fail:
            raise BackendError("the LLM replicas did not answer")
        return super().score(requests)

    def generate(self, requests):
        if "generate" in self.fail:
            raise RuntimeError("CUDA error: device lost")
        return super().generate(requests)


@pytest.fixture
def make_client(corpus_store, feedback, settings):
    settings = settings.model_copy(update={"api_keys": json.dumps(KEYS), "events_per_reader_per_minute": 600})
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    clients = []

    def make(backend=None) -> TestClient:
        service = Newsrank(settings, corpus_store, feedback, backend or FakeBackend(), clock=lambda: NOW)
        client = TestClient(app=create_app(newsrank=service))
        clients.append(client.__enter__())
        client.service = service
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def post_events(client, events, key=ADMIN, headers=None):
    return client.post("/v1/events", json={"events": events}, headers={**auth(key), **(headers or {})})


def error_shape(response) -> None:
    body = response.json()
    assert set(body) - {"fields"} == {"error", "detail"} and isinstance(body["error"], str), body


# -- manipulation -------------------------------------------------------------------------------------------
def test_one_reader_cannot_make_an_article_popular(client):
    # 500 clicks of one reader on s7 against one click each of three readers on p1
    assert post_events(client, [{"user_id": "fan", "article_id": "s7", "type": "click"}] * 500).status_code == 201
    for reader in ("fan-1", "fan-2", "fan-3"):
        assert post_events(client, [{"user_id": reader, "article_id": "p1", "type": "click"}]).status_code == 201
    assert client.service.feedback.click_counts(NOW - 3600) == {"s7": 1, "p1": 3, "s1": 1, "s2": 1}
    feed = client.post("/v1/feed", json={"user_id": "newcomer", "k": 16, "explain": False}, headers=auth()).json()
    popularity = {i["article_id"]: i["signals"]["popularity"] for i in feed["items"]}
    assert feed["cold_start"] and popularity["p1"] == 1.0 and popularity["s7"] < 0.7
    assert feed["items"][0]["article_id"] != "s7"


def test_a_reader_has_an_event_rate(client):
    burst = [{"user_id": "fan", "article_id": "s3", "type": "impression"}] * 600
    assert post_events(client, burst, FANS).status_code == 201
    over = post_events(client, [{"user_id": "fan", "article_id": "s3", "type": "click"}], FANS)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    error_shape(over)
    assert post_events(client, [{"user_id": "fan-2", "article_id": "s3", "type": "click"}], FANS).status_code == 201


def test_events_name_real_articles_and_their_readers_own_rankings(client):
    feed = client.post("/v1/feed", json={"user_id": "fan", "k": 3, "explain": False}, headers=auth(FANS)).json()
    shown = [item["article_id"] for item in feed["items"]]
    unshown = next(a for a in ("s1", "s2", "s3", "s4", "s5") if a not in shown)
    mine = {"user_id": "fan", "article_id": shown[0], "type": "click", "ranking_id": feed["ranking_id"]}
    assert post_events(client, [mine], FANS).status_code == 201
    for bad in (
        {**mine, "user_id": "fan-2"},  # not theirs
        {**mine, "article_id": unshown},  # not in that ranking
        {**mine, "ranking_id": "0" * 32},  # made up
        {**mine, "ranking_id": "x" * 100_000},  # 100 kB of id
        {"user_id": "fan", "article_id": "no-such-article", "type": "click"},
    ):
        response = post_events(client, [bad], FANS)
        assert response.status_code == 400, bad
        error_shape(response)


def test_a_retried_batch_is_stored_once(client):
    before = client.service.feedback.count_events()
    batch = [
        {"user_id": "fan", "article_id": "s3", "type": "click"},
        {"user_id": "fan", "article_id": "s4", "type": "like"},
    ]
    first = post_events(client, batch, FANS, {"Idempotency-Key": "batch-42"})
    again = post_events(client, batch, FANS, {"Idempotency-Key": "batch-42"})
    assert first.json() == {"stored": 2, "replayed": False} and again.json() == {"stored": 0, "replayed": True}
    assert client.service.feedback.count_events() == before + 2
    # keys belong to the API key that sent them: another client's "batch-42" is its own batch
    assert post_events(client, batch, ADMIN, {"Idempotency-Key": "batch-42"}).json()["stored"] == 2


def test_interests_and_mutes_are_capped(client):
    many = [f"topic {i}" for i in range(MAX_INTERESTS + 1)]
    response = client.patch("/v1/users/fan", json={"interests": many}, headers=auth())
    assert response.status_code == 400
    error_shape(response)
    feed = client.post("/v1/feed", json={"user_id": "fan", "k": 2, "explain": False}, headers=auth()).json()
    for i in range(MAX_INTERESTS + 5):  # "more about X", again and again: the newest wishes are kept
        message = {"role": "user", "content": f"more about topic {i}"}
        chat = {"user_id": "fan", "ranking_id": feed["ranking_id"], "messages": [message]}
        assert client.post("/v1/chat", json=chat, headers=auth()).status_code == 200
    interests = client.get("/v1/users/fan", headers=auth()).json()["explicit_interests"]
    assert len(interests) == MAX_INTERESTS and interests[-1] == f"topic {MAX_INTERESTS + 4}"
    assert "topic 0" not in interests


# -- training jobs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"name": "clicks", "overrides": [" data=/etc/hostname"]},
        {"name": "clicks", "overrides": [" output=/tmp/x"]},
        {"name": "clicks", "overrides": ["base_model=evil/model"]},
        {"name": "clicks", "overrides": ["no_such_setting=1"]},
        {"name": "x@5"},
        {"name": "clicks", "since": "2" * 200_000},
    ],
)
def test_training_requests_are_checked_before_anything_runs(client, body):
    response = client.post("/v1/jobs/train", json=body, headers=auth())
    assert response.status_code == 400, response.text
    error_shape(response)
    assert client.service.feedback.jobs() == []


def test_the_trainer_parses_overrides_the_same_way():
    from adapters.train import load_config

    with pytest.raises(Exception, match="bad training override"):
        load_config(None, [" data=/etc/hostname"], data="d", output="o")
    assert load_config(None, ["rank=4"], data="d", output="o").rank == 4


def test_a_checkpoint_cannot_run_code(tmp_path):
    """Training resumes from DATA_DIR/runs/NAME/checkpoint/state.pt: loading it must never unpickle objects."""
    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"run_id": "x", "payload": Payload()}, tmp_path / "state.pt")
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        torch.load(tmp_path / "state.pt", weights_only=True)
    assert not marker.exists()
    source = (Path(__file__).parents[1] / "adapters" / "train.py").read_text()
    assert "weights_only=True" in source and "weights_only=False" not in source


# -- degrading instead of failing ---------------------------------------------------------------------------
def test_a_fresh_feed_without_the_model_is_blended_from_the_other_signals(make_client):
    client = make_client(Failing({"score", "generate"}))
    ask = {"user_id": "fan", "k": 4, "explain": True, "fresh": True}
    response = client.post("/v1/feed", json=ask, headers=auth())
    assert response.status_code == 200, response.text
    feed = response.json()
    assert feed["degraded"] == ["relevance", "explanations"]
    assert all(i["signals"]["relevance"] == 0.0 for i in feed["items"])
    assert all(i["explanation"] and i["explanation_source"] == "template" for i in feed["items"][:3])
    assert feed["items"][0]["category"] == "sports"  # similarity and affinity still know the reader
    record = client.service.feedback.ranking(feed["ranking_id"])
    assert record.degraded == ("relevance", "explanations") and record.weights["relevance"] == 0.0
    total = sum(record.weights[spec.name] for spec in SIGNALS)  # relevance's weight went to the other signals
    assert total == pytest.approx(sum(getattr(Weights(), spec.name) for spec in SIGNALS))


def test_explanations_fall_back_to_the_template_when_only_generation_fails(make_client):
    client = make_client(Failing({"generate"}))
    feed = client.post("/v1/feed", json={"user_id": "fan", "k": 3, "fresh": True}, headers=auth()).json()
    assert feed["degraded"] == ["explanations"] and feed["items"][0]["signals"]["relevance"] > 0


def test_chat_answers_from_the_record_when_the_model_fails(make_client):
    client = make_client(Failing({"generate"}))
    feed = client.post("/v1/feed", json={"user_id": "fan", "k": 3, "explain": False}, headers=auth()).json()
    ask = {"user_id": "fan", "ranking_id": feed["ranking_id"], "messages": [{"role": "user", "content": "Why?"}]}
    answer = client.post("/v1/chat", json=ask, headers=auth())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["degraded"] and body["source"] == "record" and feed["items"][0]["title"] in body["answer"]


# -- client input that used to be a 500 ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/v1/events", {"events": [{"user_id": "fan", "article_id": "s1", "type": "click", "ts": "NaN"}]}, "events.0.ts"),
        ("/v1/events", {"events": [{"user_id": "fan", "article_id": "s1", "type": "click", "ts": 1e300}]}, "bad time"),
        ("/v1/events", {"events": [{"user_id": "a/b", "article_id": "s1", "type": "click"}]}, "events.0.user_id"),
        ("/v1/events", {"events": [{"user_id": "a\r\nb", "article_id": "s1", "type": "click"}]}, "events.0.user_id"),
        ("/v1/feed", {"user_id": "fan", "filters": {"max_age_hours": 1e308}}, "filters.max_age_hours"),
        ("/v1/feed", {"user_id": "fan", "filters": {"max_age_hours": "inf"}}, "filters.max_age_hours"),
        (
            "/v1/chat",
            {"user_id": "fan", "article_id": "x" * 1_000_000, "messages": [{"role": "user", "content": "why"}]},
            "article_id",
        ),
        ("/v1/articles", {"articles": [{"id": "future", "title": "From the year 3000", "published_at": "3000-01-01"}]},
         "bad time"),
        ("/v1/articles", {"articles": [{"id": "nan", "title": "Not a time", "published_at": "NaN"}]},
         "articles.0.published_at"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_in_the_one_error_shape(client, path, body, names):
    """Each a 400 of the one shape ({error, detail, fields?}), as InvalidInput, naming what was wrong: the field's
    key, or the reason in the detail."""
    response = client.post(path, json=body, headers=auth())
    assert response.status_code == 400, response.text
    error_shape(response)
    error = response.json()
    assert error["error"] == "InvalidInput" and error["detail"], error
    said = [error["detail"], *(f["key"] for f in error.get("fields", []))]
    assert any(names in s for s in said), error


def test_any_reader_created_by_events_can_be_exported_and_erased(client):
    for user in ("用户-ü", 'say "hi"; x=1', "emoji-🙂"):
        assert post_events(client, [{"user_id": user, "article_id": "s1", "type": "click"}]).status_code == 201
        exported = client.get(f"/v1/users/{user}/export", headers=auth())
        assert exported.status_code == 200, exported.text
        disposition = exported.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="newsrank-user-') and "filename*=UTF-8''" in disposition
        assert disposition.count('"') == 2  # the id's own quotes cannot end the file name early
        assert client.delete(f"/v1/users/{user}", headers=auth()).status_code == 200
        assert client.get(f"/v1/users/{user}", headers=auth()).status_code == 404


def test_framework_errors_and_bugs_use_the_one_error_shape(client, caplog):
    for response, status in (
        (client.get("/v1/nothing-here", headers=auth()), 404),
        (client.delete("/v1/feed", headers=auth()), 405),
        (client.post("/v1/feed", content=b"{not json", headers={**auth(), "content-type": "application/json"}), 400),
    ):
        assert response.status_code == status
        error_shape(response)

    def broken(user_id):
        raise RuntimeError("a bug")

    client.service.user = broken
    with caplog.at_level(logging.ERROR, logger="newsrank.serve"):
        response = client.get("/v1/users/fan", headers=auth())
    assert response.status_code == 500 and response.json()["error"] == "InternalError"
    assert "a bug" not in response.text  # the body says nothing of the inside
    assert "RuntimeError: a bug" in caplog.text and "/v1/users/{user_id}" in caplog.text  # with its traceback


def test_security_headers_on_the_page_and_the_api(client):
    for response in (client.get("/"), client.get("/healthz"), client.get("/v1/users/", headers=auth())):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_the_access_log_has_routes_not_readers(client, caplog):
    with caplog.at_level(logging.INFO, logger="newsrank.access"):
        client.get("/v1/users/fan-secret-id", headers=auth())
        client.get("/v1/why", params={"user_id": "fan-secret-id", "article_id": "s1"}, headers=auth())
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "newsrank.access")
    assert "GET /v1/users/{user_id} 404" in logged and "GET /v1/why 404" in logged
    assert "fan-secret-id" not in logged


# -- erasure --------------------------------------------------------------------------------------------------
def test_an_erased_reader_leaves_no_trace_in_the_database_files(feedback, tmp_path):
    secret = "reader-to-forget-7f3a"
    feedback.add_events([Event(secret, f"a{i}", "click", NOW + i) for i in range(150)])
    feedback.add_events([Event("someone-else", "a1", "click", NOW)])
    feedback.delete_user(secret)
    database, wal = Path(feedback.path), Path(feedback.path + "-wal")
    assert secret.encode() not in database.read_bytes()
    assert not wal.exists() or secret.encode() not in wal.read_bytes()
    assert feedback.events("someone-else")  # the others' data stays


# -- a flood -----------------------------------------------------------------------------------------------------
class Slow(FakeBackend):
    def score(self, requests):
        time.sleep(1.0)
        return super().score(requests)


def test_a_flood_of_fresh_feeds_is_bounded_not_queued_forever(make_client):
    """20 fresh feeds at once, 2 at the model and 3 waiting: the others get 429 at once, nobody waits past the
    bound."""
    client = make_client(Slow())
    client.service.model_slots = ModelSlots(concurrent=2, waiting=3, wait_seconds=10)
    answers = []

    def ask(n: int) -> None:
        started = time.monotonic()
        ask = {"user_id": "fan", "k": 3, "explain": False, "fresh": True}
        response = client.post("/v1/feed", json=ask, headers=auth())
        answers.append((response.status_code, time.monotonic() - started, response.headers.get("Retry-After")))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(code for code, _, _ in answers)
    assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses
    assert all(after for code, _, after in answers if code == 429)
    assert max(seconds for code, seconds, _ in answers if code == 429) < 1.0  # turned away at once
    assert max(seconds for _, seconds, _ in answers) < 10


def test_a_wait_for_the_model_has_a_deadline_and_a_share_per_key():
    async def check() -> None:
        gate = ModelSlots(concurrent=1, waiting=1, wait_seconds=0.2)
        async with gate.slot("feed", "a"):
            with pytest.raises(RateLimited, match="busy"):
                async with gate.slot("feed", "b"):
                    pass
        shared = ModelSlots(concurrent=2, waiting=2, wait_seconds=5, key_share=0.5)
        release = asyncio.Event()

        async def hold(key: str) -> None:
            async with shared.slot("feed", key):
                await release.wait()

        held = [asyncio.create_task(hold("a")) for _ in range(2)]  # key a: one at the model, one waiting
        await asyncio.sleep(0.05)
        with pytest.raises(RateLimited, match="share"):  # its share of the line (2 of 4) is taken
            async with shared.slot("feed", "a"):
                pass
        async with shared.slot("feed", "b"):  # another key gets the other slot at once
            assert await shared.run(lambda: 42) == 42
        release.set()
        await asyncio.gather(*held)

    asyncio.run(check())


def test_a_job_that_cannot_start_fails_at_once(client):
    """A child process that cannot be started (here: a NUL byte in its arguments) fails the job; it never
    leaves the request waiting or the one job slot taken."""
    with pytest.raises(BackendError, match="did not start: embedded null byte"):
        client.service.jobs.start("clicks", since="a\x00b")
    assert [j.status for j in client.service.feedback.jobs()] == ["failed"]  # recorded, and the slot is free


def test_a_full_disk_is_a_clear_error_and_nothing_acknowledged_is_lost(feedback):
    from core.errors import StoreUnavailable

    feedback.add_events([Event("fan", "s1", "click", NOW)])
    with feedback.transaction() as tx:  # the file may not grow any more: what a full disk does to SQLite
        pages = tx.row("PRAGMA page_count")["page_count"]
        tx.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreUnavailable, match="full"):
        feedback.add_events([Event(f"reader-{i}", "s1", "impression", NOW) for i in range(5000)])
    assert feedback.count_events() == 1  # the store still answers, and holds what it acknowledged
    with feedback.transaction() as tx:
        tx.execute("PRAGMA max_page_count = 1073741823")
    assert feedback.add_events([Event("fan", "s2", "click", NOW)]) == 1  # and writes again once there is room


def test_metrics_count_a_refused_key_as_the_401_it_is(client):
    assert client.get("/v1/users/").status_code == 401
    metrics = client.get("/metrics", headers=auth()).text
    assert 'route="/v1/users",status="401"' in metrics or 'route="/v1/users/",status="401"' in metrics
    assert 'status="500"' not in metrics
