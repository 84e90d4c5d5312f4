"""The HTTP service: Litestar's TestClient with the real agent, and the real server process on loopback."""

import os
import subprocess
import sys

import httpx
import pytest
from litestar.testing import TestClient

from agent.feedback import Event
from agent.service import Newsrank
from serve.app import create_app
from tests.conftest import NOW, free_port, wait_until_up


@pytest.fixture
def client(corpus_store, feedback, settings, llm):
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW)
    with TestClient(app=create_app(newsrank=service)) as client:
        yield client


def test_health_feed_and_why(client):
    assert client.get("/healthz").json()["status"] == "ok"
    response = client.post("/v1/feed", json={"user_id": "fan", "k": 4, "explain": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["items"]) == 4 and body["ranking_id"] and not body["cold_start"]
    first = body["items"][0]
    assert first["category"] == "sports" and first["explanation"] and first["grounded_in"]
    why = client.get("/v1/why", params={"user_id": "fan", "article_id": first["article_id"]})
    assert why.status_code == 200 and "#1 of 4" in why.json()["answer"]


def test_errors_are_clear(client):
    assert client.post("/v1/feed", json={"user_id": "fan", "k": 0}).status_code == 400
    assert client.post("/v1/feed", json={"k": 3}).status_code == 400
    missing = client.get("/v1/why", params={"user_id": "fan", "article_id": "zzz"})
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    adapter = client.post("/v1/feed", json={"user_id": "fan", "adapter": "nope"})
    assert adapter.status_code == 404 and "nope" in adapter.json()["detail"]
    assert client.get("/schema/openapi.json").json()["info"]["title"] == "newsrank"


def test_the_real_server_seeds_the_demo_and_serves_an_explained_feed(tmp_path):
    port = free_port()
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", server, 300)
        response = httpx.post(f"{base}/v1/feed", json={"user_id": "demo-sports", "k": 5}, timeout=120)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [i["category"] for i in items].count("sports") >= 4
        assert all(i["explanation"] for i in items[:3])
        cold = httpx.post(f"{base}/v1/feed", json={"user_id": "demo-new", "k": 5}, timeout=120).json()
        assert cold["cold_start"] and len({i["category"] for i in cold["items"]}) >= 3
    finally:
        server.terminate()
        server.wait(timeout=30)
