"""Two real `newsrank serve` processes on one PostgreSQL server and one Chroma server: what a reader, an editor
and an operator do through one instance is what the other serves. Then each instance is killed (kill -9): a
training job it ran is marked interrupted by the other, and every event it acknowledged is in the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from adapters.registry import AdapterRegistry
from store import open_store
from tests.conftest import MODEL_CACHE, chroma_server, free_port, random_lora, wait_until_up

KEY = "instances-test-admin-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ARTICLE = "a001"  # a demo article: events must name articles that exist


class Instance:
    def __init__(self, name: str, base: str, process: subprocess.Popen, data: Path) -> None:
        self.name, self.base, self.process, self.data = name, base, process, data

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.base + path, headers=HEADERS, timeout=300, **kwargs)

    def post(self, path: str, body: object = None) -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers=HEADERS, timeout=300)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(self.base + path, headers=HEADERS, timeout=300)


@pytest.fixture(scope="module")
def fleet(postgres, tmp_path_factory):
    """Instance A (which loads the demo into the empty stores) and instance B, sharing the database, the
    Chroma server, the adapter files and the API keys; each with a data directory of its own."""
    root = tmp_path_factory.mktemp("fleet")
    database = postgres()
    with chroma_server(root / "chroma") as chroma:
        env = {
            **os.environ,
            "NEWSRANK_DATABASE_URL": database,
            "NEWSRANK_CHROMA_URL": chroma,
            "NEWSRANK_ADAPTERS_DIR": str(root / "adapters"),
            "NEWSRANK_API_KEYS": json.dumps([{"name": "ops", "key": KEY, "scope": "admin"}]),
            "NEWSRANK_PSEUDONYM_SECRET": "the fleet's own pseudonym secret",  # instances sharing a store share it
            "NEWSRANK_READERS_PER_KEY_PER_HOUR": "1000000",  # the burst below brings thousands of readers at once
            "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE),
            "NEWSRANK_CANDIDATES": "12",
            "NEWSRANK_EXPLAIN_TOP": "0",
            "NEWSRANK_JOB_HEARTBEAT_SECONDS": "1",
            "NEWSRANK_JOB_SILENCE_SECONDS": "5",
        }
        instances = []
        try:
            for name, demo in (("a", True), ("b", False)):
                port, data = free_port(), root / name
                command = [sys.executable, "-m", "serve.cli", "serve", "--port", str(port)]
                process = subprocess.Popen(
                    command + ([] if demo else ["--no-demo"]),
                    env={**env, "NEWSRANK_DATA_DIR": str(data)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                instances.append(Instance(name, f"http://127.0.0.1:{port}", process, data))
                wait_until_up(f"{instances[-1].base}/readyz", process, 300)
            yield instances[0], instances[1], database, root
        finally:
            for instance in instances:
                if instance.process.poll() is None:
                    instance.process.terminate()
                    instance.process.wait(timeout=30)


def test_events_posted_to_one_instance_shape_the_feed_of_the_other(fleet):
    a, b, _, _ = fleet
    assert b.get("/v1/users/fleet-reader").status_code == 404
    sports = [i["article_id"] for i in a.post("/v1/feed", {"user_id": "demo-sports", "k": 8, "explain": False})
              .json()["items"] if i["category"] == "sports"]  # fmt: skip
    assert len(sports) >= 3
    events = [{"user_id": "fleet-reader", "article_id": s, "type": "click"} for s in sports[:3]]
    assert a.post("/v1/events", {"events": events}).status_code == 201
    profile = b.get("/v1/users/fleet-reader").json()
    assert profile["history"] and "sports" in {i["label"] for i in profile["interests"]}
    feed = b.post("/v1/feed", {"user_id": "fleet-reader", "k": 5, "explain": False}).json()
    assert not feed["cold_start"] and [i["category"] for i in feed["items"]].count("sports") >= 3


def test_scores_computed_in_the_background_by_either_instance_serve_both(fleet):
    a, b, _, _ = fleet
    events = [{"user_id": "fleet-scored", "article_id": x, "type": "click"} for x in (ARTICLE, "a002")]
    assert a.post("/v1/events", {"events": events}).status_code == 201  # asks for the reader's scoring
    request = {"user_id": "fleet-scored", "k": 5, "explain": False}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        sources = {i["relevance_source"] for i in b.post("/v1/feed", request).json()["items"]}
        if sources == {"llm"}:
            break
        time.sleep(0.5)
    assert sources == {"llm"}
    assert {i["relevance_source"] for i in a.post("/v1/feed", request).json()["items"]} == {"llm"}
    gauges = [line.split()[0] for line in b.get("/metrics").text.splitlines() if line.startswith("newsrank_scoring")]
    assert {'newsrank_scoring_queue_depth{kind="reader"}', "newsrank_scoring_queue_oldest_seconds"} <= set(gauges)


def test_a_ranking_made_on_one_instance_is_explained_on_the_other(fleet):
    a, b, _, _ = fleet
    feed = a.post("/v1/feed", {"user_id": "demo-sports", "k": 5, "explain": False}).json()
    top = feed["items"][0]
    why = b.get("/v1/why", params={"user_id": "demo-sports", "article_id": top["article_id"],
                                   "ranking_id": feed["ranking_id"]})  # fmt: skip
    assert why.status_code == 200 and top["title"] in why.json()["answer"]
    chat = b.post("/v1/chat", {"user_id": "demo-sports", "ranking_id": feed["ranking_id"],
                               "article_id": top["article_id"],
                               "messages": [{"role": "user", "content": "Why was this recommended?"}]})  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.json()["article_id"] == top["article_id"]


def test_an_adapter_activated_on_one_instance_is_served_by_the_other(fleet, tmp_path):
    a, b, database, root = fleet
    store = open_store(database)
    registry = AdapterRegistry(root / "adapters", store)
    registry.publish("fleet", random_lora(tmp_path / "one", seed=1))
    registry.publish("fleet", random_lora(tmp_path / "two", seed=2))
    store.close()
    request = {"user_id": "demo-sports", "k": 3, "explain": False, "adapter": "fleet"}
    assert b.post("/v1/feed", request).json()["adapter"] == "fleet@2"
    assert a.post("/v1/adapters/fleet/activate", {"version": 1}).json()["active"]
    assert b.post("/v1/feed", request).json()["adapter"] == "fleet@1"
    assert a.post("/v1/adapters/fleet/rollback").status_code == 200
    assert b.post("/v1/feed", request).json()["adapter"] == "fleet@2"
    assert [v["version"] for v in b.get("/v1/adapters/").json() if v["name"] == "fleet" and v["active"]] == [2]


def test_two_training_jobs_started_at_once_on_two_instances_give_one_job(fleet):
    a, b, _, _ = fleet
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def train(instance: Instance) -> None:
        barrier.wait()
        # no events after 2100: the job fails fast, after it was started
        answers[instance.name] = instance.post("/v1/jobs/train", {"name": "fleet", "since": "2100-01-01T00:00:00Z"})

    threads = [threading.Thread(target=train, args=(i,)) for i in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers.values()) == [202, 409]
    started = next(name for name, r in answers.items() if r.status_code == 202)
    job_id = answers[started].json()["job_id"]
    other = b if started == "a" else a
    status = wait_for_job(other, job_id, lambda j: j["status"] != "running", 180)
    assert status["status"] == "failed" and "no positive examples" in status["log_tail"]


def test_a_reader_erased_through_one_instance_is_gone_on_the_other(fleet):
    a, b, _, _ = fleet
    assert b.get("/v1/users/fleet-reader").status_code == 200
    assert a.delete("/v1/users/fleet-reader").status_code == 200
    assert b.get("/v1/users/fleet-reader").status_code == 404
    assert "fleet-reader" not in b.get("/v1/users/").json()


def test_a_job_whose_instance_died_is_interrupted_by_the_other(fleet):
    a, b, _, _ = fleet
    response = a.post("/v1/jobs/train", {"name": "fleet", "since": "2000-01-01T00:00:00Z", "force": True})
    assert response.status_code == 202, response.text
    job = wait_for_job(b, response.json()["job_id"], lambda j: j["pid"] is not None, 60)
    assert job["status"] == "running"
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=30)
    job = wait_for_job(b, job["job_id"], lambda j: j["status"] != "running", 60)
    assert job["status"] == "interrupted" and job["finished_at"]
    deadline = time.monotonic() + 30
    while alive(job["pid"]) and time.monotonic() < deadline:  # the child died with its instance
        time.sleep(0.5)
    assert not alive(job["pid"])
    again = b.post("/v1/jobs/train", {"name": "fleet", "since": "2100-01-01T00:00:00Z"})
    assert again.status_code == 202, again.text  # the slot is free again
    wait_for_job(b, again.json()["job_id"], lambda j: j["status"] != "running", 180)


def test_every_event_acknowledged_before_a_kill_is_in_the_database(fleet):
    _, b, database, _ = fleet
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def write(writer: int) -> None:
        with httpx.Client(headers=HEADERS, timeout=30) as client:
            for n in range(2000):
                if stop.is_set():
                    return
                ids = [f"burst-{writer}-{n}-{i}" for i in range(10)]
                events = [{"user_id": u, "article_id": ARTICLE, "type": "impression"} for u in ids]
                try:
                    if client.post(b.base + "/v1/events", json={"events": events}).status_code == 201:
                        with lock:
                            acknowledged.extend(ids)
                except httpx.TransportError:
                    return  # the instance is gone

    writers = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    b.process.send_signal(signal.SIGKILL)
    b.process.wait(timeout=30)
    stop.set()
    for w in writers:
        w.join(timeout=60)
    assert len(acknowledged) >= 3000
    store = open_store(database)
    with store.transaction() as tx:
        stored = {r["user_id"] for r in tx.rows("SELECT user_id FROM events WHERE user_id LIKE ?", ["burst-%"])}
    store.close()
    assert set(acknowledged) <= stored


def wait_for_job(instance: Instance, job_id: str, done, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = instance.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} on {instance.name}: {job}")


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
