"""The real server process on loopback, as `newsrank serve` starts it: HTTP with the key it created on first
start, and the web page driven in headless Chromium."""

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port, wait_until_up

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve") / "data"
    port = free_port()
    # an A/B test of blend settings, as an operator sets it (no adapter exists on a fresh server)
    experiment = {"name": "fresher", "arms": {"control": {}, "treatment": {"weights": {"freshness": 0.2}}}}
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(data), "NEWSRANK_EXPERIMENT": json.dumps(experiment)}
    process = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/readyz", process, 300)
        yield base, json.loads((data / "api_keys.json").read_text())[0]["key"], process, data
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_real_server_seeds_the_demo_and_serves_an_explained_feed(server):
    base, key, *_ = server
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{base}/v1/feed", json={"user_id": "demo-sports"}, timeout=30).status_code == 401
    response = httpx.post(f"{base}/v1/feed", json={"user_id": "demo-sports", "k": 5}, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["category"] for i in items].count("sports") >= 4
    assert all(i["explanation"] for i in items[:3])
    cold = httpx.post(f"{base}/v1/feed", json={"user_id": "demo-new", "k": 5}, headers=headers, timeout=120).json()
    assert cold["cold_start"] and len({i["category"] for i in cold["items"]}) >= 3
    spec = httpx.get(f"{base}/schema/openapi.json", timeout=30).json()
    assert {"/v1/feed", "/v1/events", "/v1/chat", "/v1/chat/stream", "/v1/users/{user_id}"} <= set(spec["paths"])
    metrics = httpx.get(f"{base}/metrics", headers=headers, timeout=30).text
    assert 'newsrank_http_requests_total{method="POST",route="/v1/feed",status="200"} 2' in metrics


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make test installs it)")
def test_the_web_page_feed_feedback_and_chat(server):
    from playwright.sync_api import expect, sync_playwright

    base, key, *_ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)  # chat's answer takes seconds on a CPU
            page.goto(f"{base}/#key={key}")  # the fragment `newsrank serve` prints; the page keeps the key
            assert "key=" not in page.url
            page.get_by_test_id("user").fill("demo-tech")
            page.get_by_test_id("user").dispatch_event("change")
            page.wait_for_function("() => state.feedUser === 'demo-tech'")  # not the first reader's feed
            items = page.get_by_test_id("item")
            expect(items.first).to_be_visible()
            expect(page.get_by_test_id("explanation").first).to_be_visible()
            first_id = items.first.get_attribute("data-article")
            first_title = items.first.locator("h3").inner_text()

            # a click is stored and the feed is ranked again without the article just read
            items.first.get_by_test_id("read").click()
            expect(page.get_by_test_id("status")).to_contain_text(" ms")
            expect(page.locator(f'[data-testid=item][data-article="{first_id}"]')).to_have_count(0)

            # rate the new top item and comment on it (the comment as text, never as markup)
            rated = items.first.get_attribute("data-article")
            items.first.get_by_test_id("rate").select_option("4")
            expect(page.get_by_test_id("status")).to_have_text("rating saved")
            items.first.get_by_test_id("comment-text").fill("<b>Good</b> read")
            items.first.get_by_test_id("comment").click()
            expect(page.get_by_test_id("status")).to_contain_text(" ms")

            # ask why about the new top item, then ask for less like it: the feed changes again
            items.first.get_by_test_id("why").click()
            page.get_by_test_id("ask").click()
            expect(page.get_by_test_id("msg-assistant")).not_to_have_text("…")
            answer = page.get_by_test_id("msg-assistant").first.inner_text()
            assert len(answer) > 20 and answer != first_title
            before = items.evaluate_all("nodes => nodes.map(n => n.dataset.article)")
            page.get_by_test_id("question").fill("show me less like this")
            page.get_by_test_id("ask").click()
            expect(page.get_by_test_id("msg-assistant").nth(1)).to_contain_text("no more")
            page.get_by_test_id("question").fill("Why is the first one above the second?")
            page.get_by_test_id("ask").click()
            expect(page.get_by_test_id("msg-assistant").nth(2)).to_contain_text("(#1) is above")
            page.wait_for_function(
                "before => JSON.stringify([...document.querySelectorAll('[data-testid=item]')]"
                ".map(n => n.dataset.article)) !== JSON.stringify(before)",
                arg=before,
            )
        finally:
            browser.close()
    headers = {"Authorization": f"Bearer {key}"}
    profile = httpx.get(f"{base}/v1/users/demo-tech", headers=headers, timeout=30).json()
    assert profile["mutes"] and first_title in profile["history"]
    events = httpx.get(f"{base}/v1/users/demo-tech/export", headers=headers, timeout=30).json()["events"]
    voiced = [(e["article_id"], e["type"], e["value"], e["text"]) for e in events if e["type"] in ("rating", "comment")]
    assert voiced == [(rated, "rating", 4, None), (rated, "comment", None, "<b>Good</b> read")]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make test installs it)")
def test_the_operator_dashboard_plots_what_readers_did(server):
    """Readers read, click and rate through the API; the dashboard, in the real browser, plots what the store says."""
    from playwright.sync_api import expect, sync_playwright

    base, key, *_ = server
    headers = {"Authorization": f"Bearer {key}"}
    clicked_title = None
    for user in ("demo-sports", "demo-politics", "demo-tech", "demo-new", "reader-a", "reader-b"):
        feed = httpx.post(f"{base}/v1/feed", json={"user_id": user, "k": 5, "explain": False}, headers=headers,
                          timeout=120).json()  # fmt: skip
        top = feed["items"][0]
        events = [{"user_id": user, "article_id": top["article_id"], "type": "click", "ranking_id": feed["ranking_id"]},
                  {"user_id": user, "type": "rating", "value": 5 if feed["arm"] == "treatment" else 3,
                   "ranking_id": feed["ranking_id"]}]  # fmt: skip
        stored = httpx.post(f"{base}/v1/events", json={"events": events}, headers=headers, timeout=30)
        assert stored.status_code == 201, stored.text
        clicked_title = top["title"]
    report = httpx.get(f"{base}/v1/stats", params={"by": "arm"}, headers=headers, timeout=30).json()
    assert sum(row["feeds"] for row in report["total"].values()) >= 6
    expected = {(s["arm"], s["feed_ctr"]["value"]) for s in report["series"]}
    ratings = {(s["arm"], s["rating"]["value"]) for s in report["series"]}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(f"{base}/dashboard#key={key}")
            expect(page.get_by_test_id("status")).to_contain_text("feeds ·")
            plots = page.get_by_test_id("plot")
            expect(plots).to_have_count(len(report["metrics"]))

            def points(metric: str) -> set:
                found = page.locator(f'[data-testid=plot][data-metric="{metric}"] [data-testid=point]')
                return {tuple(p) for p in found.evaluate_all("ns => ns.map(n => [n.dataset.arm, +n.dataset.value])")}

            assert points("feed_ctr") == expected and points("rating") == ratings
            serving = page.get_by_test_id("serving-table").inner_text()
            assert "control" in serving and "treatment" in serving and "freshness 0.2" in serving
            assert clicked_title in page.get_by_test_id("most-clicked").inner_text()
            totals = page.get_by_test_id("totals-table").inner_text()
            assert "treatment − control" in totals and "rating_high" in totals
            assert page.get_by_test_id("live-table").inner_text().count("mean feed latency") == 1
        finally:
            browser.close()


def test_the_server_logs_no_key_and_no_reader_and_keeps_its_files_private(server):
    """Last in this module: it stops the server to read everything it wrote."""
    base, key, process, data = server
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base}/v1/users/demo-politics", headers=headers, timeout=30).status_code == 200
    process.terminate()
    output = process.communicate(timeout=30)[0]
    assert "GET /v1/users/{user_id} 200" in output  # the access log: the route, not the reader
    assert key not in output and "demo-politics" not in output
    assert str(data.resolve() / "api_keys.json") in output  # where to find the key instead
    files = [p for p in data.rglob("*")]
    assert any(p.name == "feedback.sqlite3" for p in files) and any(p.name == "api_keys.json" for p in files)
    assert [p for p in files if p.stat().st_mode & 0o077] == []  # nothing readable by others
