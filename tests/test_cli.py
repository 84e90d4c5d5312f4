"""The `newsrank` command as a user runs it: a real process, real stores, the real packaged LLM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.records import BLEND
from store import migrations

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def run(tmp_path):
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data"), "NEWSRANK_EXPLAIN_TOP": "2"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serve.cli", *args], env=env, capture_output=True, text=True, timeout=600
        )

    return run


def test_ingest_events_recommend_why(run, tmp_path):
    empty = run("recommend", "--user", "u1")
    assert empty.returncode == 4 and "store is empty" in empty.stderr and "Traceback" not in empty.stderr

    ingested = run("ingest", str(FIXTURES / "articles.jsonl"), str(FIXTURES / "news.tsv"))
    assert ingested.returncode == 0, ingested.stderr
    assert "5 malformed" in ingested.stdout and "line 3:" in ingested.stdout
    assert "store now holds 6 articles" in ingested.stdout

    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"user_id": "u1", "article_id": "N1", "type": "click"})
        + "\n"
        + json.dumps({"user_id": "u1", "article_id": "j1", "type": "nope"})
        + "\n"
    )
    added = run("events", "add", str(events))
    assert added.returncode == 0 and "1 events stored from 2 rows, 1 malformed" in added.stdout

    worker = run("worker", "--until-idle")  # the sweep finds u1 active and never scored
    assert worker.returncode == 0 and "1 tasks done" in worker.stdout, worker.stderr
    from store.sqlite import SqliteFeedbackStore

    store = SqliteFeedbackStore(tmp_path / "data" / "feedback.sqlite3")
    assert [r["user_id"] for r in store.table_rows("events").__next__()] == ["u1"]
    assert scored(store) >= 3  # its candidates
    store.close()

    feed = run("recommend", "--user", "u1", "--k", "3", "--explain", "--json")
    assert feed.returncode == 0, feed.stderr
    body = json.loads(feed.stdout)
    assert len(body["items"]) == 3 and "N1" not in [i["article_id"] for i in body["items"]]
    assert body["items"][0]["explanation"] and body["items"][2]["explanation"] is None
    assert set(body["items"][0]["signals"]) == {spec.name for spec in BLEND}  # every term of the blend

    top = body["items"][0]["article_id"]
    why = run("why", "--user", "u1", "--article", top)
    assert why.returncode == 0 and "#1 of 3" in why.stdout

    table = run("recommend", "--user", "u1", "--k", "2")
    assert table.returncode == 0 and table.stdout.count("\n") >= 4 and "score" in table.stdout


def test_bad_input_gives_one_line_and_an_exit_code(run, tmp_path):
    missing = run("ingest", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and missing.stderr.startswith("newsrank: no such file")
    assert run("ingest").returncode == 2
    assert run("ingest", str(FIXTURES / "news.tsv")).returncode == 0
    unknown = run("why", "--user", "ghost", "--article", "N1")
    assert unknown.returncode == 3 and "never recommended" in unknown.stderr
    bad_k = run("recommend", "--user", "u1", "--k", "0")
    assert bad_k.returncode == 2 and "k must be" in bad_k.stderr


def test_db_status_and_migrate_to_postgresql(run, tmp_path, postgres):
    """From one machine to many: the embedded store is copied into PostgreSQL, all of it, and served from there."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"user_id": f"u{i}", "article_id": "N1", "type": "click"}) + "\n"
                              for i in range(3)))  # fmt: skip
    assert run("events", "add", str(events)).returncode == 0
    status = run("db", "status")
    latest = len(migrations.MIGRATIONS)
    assert status.returncode == 0 and f"schema version {latest} of {latest}" in status.stdout
    assert " events " in status.stdout and status.stdout.split(" events ")[1].split()[0] == "3"

    url = postgres().replace("newsrank@", "newsrank:secret@")  # trust auth ignores the password; it is not shown
    assert run("db", "migrate-to").returncode == 2
    moved = run("db", "migrate-to", url)
    assert moved.returncode == 0, moved.stderr
    assert "copied 3 rows" in moved.stdout and "3 events" in moved.stdout and "secret" not in moved.stdout
    again = run("db", "migrate-to", url)
    assert again.returncode == 2 and "not empty" in again.stderr

    from store import open_store

    store = open_store(url)
    assert store.user_ids() == ["u0", "u1", "u2"] and store.count_events() == 3
    store.close()


def scored(store) -> int:
    with store.transaction() as tx:
        return tx.row("SELECT COUNT(*) AS n FROM relevance WHERE user_id = 'u1'")["n"]


def test_a_worker_process_scores_what_is_due_and_stops_on_sigterm(run, tmp_path):
    """`newsrank worker` on its own, as a deployment that keeps the API apart runs it."""
    import signal
    import time

    from store.sqlite import SqliteFeedbackStore

    assert run("ingest", str(FIXTURES / "articles.jsonl"), str(FIXTURES / "news.tsv")).returncode == 0
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"user_id": "u1", "article_id": "N1", "type": "click"}) + "\n")
    assert run("events", "add", str(events)).returncode == 0
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data")}
    worker = subprocess.Popen([sys.executable, "-m", "serve.cli", "worker"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    store = SqliteFeedbackStore(tmp_path / "data" / "feedback.sqlite3")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not scored(store):
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.5)
        assert scored(store)  # the sweep found u1 active and unscored
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        store.close()
    assert "scorer thread(s)" in worker.stdout.read()
