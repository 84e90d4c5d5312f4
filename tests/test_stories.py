"""Stories, following them, news on request and what a comment says: on real Chroma, SQLite and the API."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

from core.records import Event
from feed.recommender import FeedRequest
from feed.stance import stance
from llm.backends.fake import FakeBackend
from retrieval import stories
from serve.app import create_app
from serve.service import Newsrank
from tests.conftest import HOUR, NOW, article

WIRE = [  # one event from three sources, and an unrelated article with a similar headline
    article("w1", "Riverton flood: dam fails after record rain, thousands evacuated", "news", 5),
    article("w2", "Riverton flood: dam fails after record rain, thousands evacuated overnight", "news", 4),
    article("w3", "Thousands evacuated in Riverton as dam fails after record rain", "news", 3),
    article("w4", "Riverton dam holds after record rain, officials say", "news", 2),
]


def test_copies_are_found_by_shingles_and_embeddings_within_days():
    a, b = WIRE[0], WIRE[1]
    assert stories.jaccard(stories.shingles(a.title), stories.shingles(b.title)) >= stories.TITLE_JACCARD
    assert stories.copies(a, b, cosine=0.5) > 0  # the same headline, lightly edited
    assert stories.copies(a, WIRE[3], cosine=0.6) == 0  # similar words, another event
    assert stories.copies(a, WIRE[2], cosine=0.95) > 0  # reworded, nearly the same meaning
    late = replace(b, published_at=a.published_at + 4 * 86400)
    assert stories.copies(a, late, cosine=0.99) == 0  # days apart: another story
    vectors = np.eye(4)
    assert stories.group(WIRE, vectors) == ["w1", "w1", "w3", "w4"]  # w3 reworded: only by its embedding


def test_ingest_gives_copies_one_story_and_a_feed_one_slot_per_story(corpus_store, feedback, settings):
    corpus_store.upsert(WIRE)
    got = corpus_store.get([a.id for a in WIRE])
    assert got["w1"].article.story == got["w2"].article.story == "w1" and got["w4"].article.story == "w4"
    assert [h.article.id for h in corpus_store.story("w1")][:2] == ["w1", "w2"]  # oldest first
    assert corpus_store.story_sizes(["w1", "w4"])["w4"] == 1
    corpus_store.upsert([WIRE[1]])  # ingested again: it keeps its story
    assert corpus_store.get(["w2"])["w2"].article.story == "w1"
    feedback.add_events([Event("reader", "s1", "click", NOW - HOUR)])
    service = Newsrank(settings.model_copy(update={"candidates": 40}), corpus_store, feedback, FakeBackend(),
                       clock=lambda: NOW)  # fmt: skip
    feed = service.recommend(FeedRequest("reader", k=20, explain=False))
    shown = [i.record.story for i in feed.items]
    assert len(shown) == len(set(shown))  # never two copies of one story
    copy = next(i.record for i in feed.items if i.record.story == "w1")
    assert copy.copies == len(corpus_store.story("w1")) >= 2 and copy.chosen_over and copy.chosen_for
    stored = feedback.ranking(feed.ranking_id).items
    assert next(i for i in stored if i.story == "w1").chosen_over == copy.chosen_over


@pytest.fixture
def client(corpus_store, feedback, settings):
    corpus_store.upsert(WIRE)
    feedback.add_events([Event("fan", a, "click", NOW - HOUR) for a in ("s1", "s2")])
    service = Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: NOW)
    with TestClient(app=create_app(newsrank=service)) as test:
        test.service = service
        test.headers = {"Authorization": f"Bearer {service_key(service)}"}
        yield test


def service_key(service: Newsrank) -> str:
    import json

    return json.loads(service.settings.api_keys_path.read_text())[0]["key"]


def test_a_story_through_the_api_and_following_it(client, corpus_store):
    story = client.get("/v1/stories/w1", headers=client.headers)
    assert story.status_code == 200 and story.json()["sources"] >= 2 and story.json()["label"] == WIRE[0].title
    assert client.get("/v1/stories/nope", headers=client.headers).status_code == 404
    followed = client.put("/v1/users/fan/follows/w1", headers=client.headers)
    assert followed.status_code == 200 and followed.json()["follows"] == ["w1"]
    # a new article of the followed story arrives: the next feed has it in its top 3, saying why
    update = article("w9", "Riverton flood: dam fails after record rain, thousands evacuated; rescue goes on overnight",
                     "news", 0.1)  # fmt: skip
    corpus_store.upsert([update])
    assert corpus_store.get(["w9"])["w9"].article.story == "w1"
    feed = client.post("/v1/feed", json={"user_id": "fan", "k": 10}, headers=client.headers).json()
    top = [i["article_id"] for i in feed["items"][:3]]
    assert "w9" in top, top
    item = next(i for i in feed["items"] if i["article_id"] == "w9")
    assert "you follow this story" in item["explanation"] and item["signals"]["followed"] > 0.9
    exported = client.get("/v1/users/fan/export", headers=client.headers).json()
    assert exported["preferences"]["follows"] == ["w1"]
    assert client.delete("/v1/users/fan/follows/w1", headers=client.headers).json()["follows"] == []


def test_news_on_request_matches_names_and_numbers_and_chat_finds_it(client):
    found = client.post("/v1/search", json={"user_id": "fan", "query": "Riverton dam", "k": 5}, headers=client.headers)
    assert found.status_code == 200, found.text
    body = found.json()
    assert {"w1", "w4"} & {i["article_id"] for i in body["items"][:3]}
    assert all(i["signals"]["query"] > 0 for i in body["items"][:3])
    assert 'matches your search "Riverton dam"' in body["items"][0]["explanation"]
    assert len({i["story"] for i in body["items"]}) == len(body["items"])  # one slot per story here too
    ask = {"user_id": "fan", "ranking_id": body["ranking_id"], "messages": [{"role": "user",
           "content": "Find me news about the Riverton dam"}]}  # fmt: skip
    reply = client.post("/v1/chat", json=ask, headers=client.headers).json()
    assert reply["intent"] == "search" and "Riverton" in reply["answer"] and reply["facts"]["found"]
    follow = {**ask, "messages": [{"role": "user", "content": "follow this story"}]}
    followed = client.post("/v1/chat", json=follow, headers=client.headers).json()
    assert followed["intent"] == "follow" and followed["preferences"]["follows"]


def test_what_a_comment_says_decides_how_it_counts(corpus_store, feedback, settings):
    """Measured on 50 comments labelled by hand (benchmarks/comments.tsv); an angry comment is no like."""
    rows = list(csv.DictReader((Path(__file__).parents[1] / "benchmarks" / "comments.tsv").open(), delimiter="\t"))
    said = ["+" if (s := stance(r["comment"])) > 0 else "-" if s < 0 else "0" for r in rows]
    accuracy = sum(s == r["label"] for s, r in zip(said, rows, strict=True)) / len(rows)
    assert len(rows) == 50 and accuracy >= 0.9, accuracy
    assert stance("This is propaganda.") < 0 < stance("Great reporting, thank you.")
    from feed.profile import event_weight

    angry = Event("u", "s1", "comment", NOW, text="This is propaganda and lies.")
    warm = Event("u", "s1", "comment", NOW, text="Wonderful story, thank you!")
    assert event_weight(angry) < 0 < event_weight(Event("u", "s1", "click", NOW)) < event_weight(warm)
