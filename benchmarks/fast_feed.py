"""Feeds from precomputed LLM relevance against today's synchronous path, through a real `newsrank serve`.

    .venv/bin/python benchmarks/fast_feed.py [--clients 8] [--rate 40] [--click-every 4] [--seconds 60]
                                             [--baseline-seconds 60] [--torch-threads N] [--probe-every 5]
                                             [--probe-until fresh|covered] [--worker [--worker-threads N]]

Starts `newsrank serve` as its own process on loopback (a temporary data dir, the demo corpus and readers, the
packaged LLM, one background scorer thread: the defaults), so the clients below do not share its interpreter;
with `--worker` the scorer is a `newsrank worker` process beside it (`NEWSRANK_SCORER_THREADS=0` on the server), so
the API and the LLM do not share one interpreter either (`--worker-threads` scorer threads in it, 1 by default).
Then three phases of `--clients` concurrent clients, together asking for `--rate` feeds a second (each client
its share, on a fixed schedule; 0: back to back, as fast as answers come):

1. cached: feeds without explanations, served from what the background scorer computed;
2. cached + explanations: the same with explanations (the template at once, the LLM's rewrite later);
3. baseline: today's synchronous path, `"fresh": true` (the LLM scores every feed while the reader waits).

In every phase half of the feeds are for the three demo readers and half for a stream of new readers (a new
reader one time in three, else one this client saw before); every fourth request (`--click-every`) is a click on
an item of the last feed the client got for that reader. Each phase's new readers are its own.

A prober measures the lag from a click to that reader's rescored LLM relevance: every `--probe-every` seconds it
sends a click for a reader of its own (with a history, scored before the phase) and asks for their feed every
0.25 s until every item's relevance is `llm` under the new profile (and notes when every item first had an LLM
relevance, `llm` or `llm-stale`: the click covered). With `--probe-until covered` a probe ends once covered, so that
a phase holds a probe every `--probe-every` seconds, not one a minute.

Prints per phase: feeds, statuses, p50/p95/p99 latency, feeds/s, the shares of relevance sources over the items
of returning readers' feeds after the first quarter of the phase (once warm), the click lag, and the scorer's
numbers from /metrics; then the ratios against the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import httpx
from harness import free_port, percentile  # benchmarks/harness.py

DEMO_READERS = ("demo-sports", "demo-politics", "demo-tech")


@dataclass
class Phase:
    name: str
    fresh: bool
    explain: bool
    seconds: float
    feeds: list[tuple[float, float, int]] = field(default_factory=list)  # (start, seconds, status)
    clicks: list[int] = field(default_factory=list)  # statuses
    sources: Counter[str] = field(default_factory=Counter)  # returning readers' items, once warm
    lags: list[float] = field(default_factory=list)  # click → every item `llm` under the new profile
    covered: list[float] = field(default_factory=list)  # click → every item with an LLM relevance (llm or stale)
    probes_unfinished: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_server(data: Path, key: str, torch_threads: int | None, worker: int = 0) -> tuple[list, str]:
    """`newsrank serve`, and with `worker` a `newsrank worker` process of that many scorer threads scoring beside
    it instead of its thread."""
    port = free_port()
    env = {
        **os.environ,
        "NEWSRANK_DATA_DIR": str(data),
        "NEWSRANK_API_KEYS": json.dumps([{"name": "bench", "key": key, "scope": "admin"}]),
        # one key and three demo readers carry the whole load: the per-reader and per-key bounds (which keep one
        # client from starving the others) are lifted, as for a platform's own load test
        "NEWSRANK_EVENTS_PER_READER_PER_MINUTE": "100000",
        "NEWSRANK_FEEDS_PER_READER_PER_MINUTE": "100000",
        "NEWSRANK_READERS_PER_KEY_PER_HOUR": "1000000",
        "NEWSRANK_LLM_KEY_SHARE": "1",
    }
    if torch_threads:
        env["NEWSRANK_THREADS"] = str(torch_threads)
    if worker:
        env["NEWSRANK_SCORER_THREADS"] = "0"
    root = Path(__file__).resolve().parents[1]
    log = (data / "server.log").open("w")  # not a pipe: a pipe nobody reads would stall the server
    process = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {(data / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                if not worker:
                    return [process], base
                scorer = subprocess.Popen(
                    [sys.executable, "-m", "serve.cli", "worker", "--threads", str(worker)],
                    cwd=root,
                    env=env,
                    stdout=(data / "worker.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
                return [process, scorer], base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready in 10 minutes")


def metrics(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("newsrank_")}


def wait_until_scored(http: httpx.Client, readers: Sequence[str], seconds: float = 300) -> None:
    """Until every item of these readers' feeds has its LLM relevance under their current profile."""
    deadline = time.monotonic() + seconds
    for reader in readers:
        while time.monotonic() < deadline:
            feed = http.post("/v1/feed", json={"user_id": reader, "k": 10, "explain": False}).json()
            if all(i["relevance_source"] == "llm" for i in feed["items"]):
                break
            time.sleep(0.5)


def click(http: httpx.Client, user: str, article: str) -> int:
    event = {"user_id": user, "article_id": article, "type": "click"}
    return http.post("/v1/events", json={"events": [event]}).status_code


def run_phase(
    base: str,
    key: str,
    phase: Phase,
    clients: int,
    rate: float,
    click_every: int,
    probe_every: float,
    probe_until: str,
    articles: Sequence[str],
) -> None:
    tag = secrets.token_hex(3)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
        for n in range(4):  # the prober's readers: a history, scored before the phase starts
            for article in articles[n * 3 : n * 3 + 2]:
                click(http, f"probe-{tag}-{n}", article)
        wait_until_scored(http, [f"probe-{tag}-{n}" for n in range(4)])
        before = metrics(http)
    started = time.monotonic()
    deadline = started + phase.seconds
    warm_after = started + phase.seconds / 4

    def client(index: int) -> None:
        rng = random.Random(index)
        mine: list[str] = []  # new readers this client has seen: they return
        last: dict[str, list[str]] = {}  # reader → article ids of their last feed
        sent = 0
        interval = clients / rate if rate > 0 else 0.0
        due = started + interval * index / clients  # the clients' schedules interleave
        with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
            while time.monotonic() < deadline:
                sent += 1
                if rng.random() < 0.5:
                    user = rng.choice(DEMO_READERS)
                elif not mine or rng.random() < 1 / 3:
                    user = f"bench-{tag}-{phase.name}-{index}-{len(mine)}"
                    mine.append(user)
                else:
                    user = rng.choice(mine)
                if sent % click_every == 0 and last.get(user):
                    status = click(http, user, rng.choice(last[user]))
                    with phase.lock:
                        phase.clicks.append(status)
                    continue
                body = {"user_id": user, "k": 10, "explain": phase.explain, "fresh": phase.fresh}
                if interval:
                    time.sleep(max(0.0, due - time.monotonic()))
                    due = max(due + interval, time.monotonic() - interval)  # a late answer does not bunch them up
                t0 = time.monotonic()
                try:
                    response = http.post("/v1/feed", json=body)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    status, response = 0, None
                    with phase.lock:
                        phase.errors[type(exc).__name__] += 1
                seconds = time.monotonic() - t0
                with phase.lock:
                    phase.feeds.append((t0, seconds, status))
                if status != 200:
                    if response is not None:
                        with phase.lock:
                            phase.errors[f"{status}: {response.text[:120]}"] += 1
                    continue
                feed = response.json()
                last[user] = [i["article_id"] for i in feed["items"]]
                if not feed["cold_start"] and t0 >= warm_after:
                    with phase.lock:
                        phase.sources.update(i["relevance_source"] for i in feed["items"])

    def prober() -> None:
        rng = random.Random(99)
        n = 0
        with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
            while time.monotonic() + probe_every < deadline:
                time.sleep(probe_every)
                user = f"probe-{tag}-{n % 4}"
                n += 1
                seen = {e["article_id"] for e in http.get(f"/v1/users/{user}/export").json()["events"]}
                article = rng.choice([a for a in articles if a not in seen])
                clicked, covered = time.monotonic(), False
                click(http, user, article)
                while time.monotonic() < clicked + 60:
                    feed = http.post("/v1/feed", json={"user_id": user, "k": 10, "explain": False}).json()
                    found = {i["relevance_source"] for i in feed["items"]}
                    if not covered and found <= {"llm", "llm-stale"}:
                        covered = True
                        with phase.lock:
                            phase.covered.append(time.monotonic() - clicked)
                        if probe_until == "covered":
                            break
                    if found == {"llm"}:
                        with phase.lock:
                            phase.lags.append(time.monotonic() - clicked)
                        break
                    time.sleep(0.25)
                else:
                    phase.probes_unfinished += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if not phase.fresh:
        threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
        after = metrics(http)
    phase.metrics = {k: after[k] - before.get(k, 0.0) if k.endswith("_total") else after[k] for k in after}


def report(phase: Phase) -> dict[str, float]:
    times = [s for _, s, _ in phase.feeds]
    ok = [s for _, s, status in phase.feeds if status == 200]
    rate = len(ok) / phase.seconds
    shares = {k: phase.sources[k] / max(1, sum(phase.sources.values())) for k in ("llm", "llm-stale", "none")}
    statuses = Counter(status for _, _, status in phase.feeds)
    m = phase.metrics
    print(f"\n## {phase.name}: {len(phase.feeds)} feeds in {phase.seconds:g} s, {len(phase.clicks)} clicks")
    print(f"- statuses: {dict(statuses)}; clicks {dict(Counter(phase.clicks))}; errors: {dict(phase.errors) or 0}")
    print(f"- latency p50 {1000 * percentile(times, 50):.0f} ms, p95 {1000 * percentile(times, 95):.0f} ms, "
          f"p99 {1000 * percentile(times, 99):.0f} ms; {rate:.1f} feeds/s")  # fmt: skip
    if phase.sources:
        print(f"- returning readers' items once warm: llm {shares['llm']:.0%}, llm-stale {shares['llm-stale']:.0%}, "
              f"none {shares['none']:.0%} (any LLM relevance: {shares['llm'] + shares['llm-stale']:.0%})")  # fmt: skip
    if phase.covered:
        print(f"- click → every item with LLM relevance (llm or llm-stale): {len(phase.covered)} probes, "
              f"p50 {percentile(phase.covered, 50):.1f} s, p95 {percentile(phase.covered, 95):.1f} s")  # fmt: skip
    if phase.lags or phase.probes_unfinished:
        print(f"- click → rescored relevance: {len(phase.lags)} probes, p50 {percentile(phase.lags, 50):.1f} s, "
              f"p95 {percentile(phase.lags, 95):.1f} s, max {max(phase.lags, default=float('nan')):.1f} s; "
              f"unfinished after 60 s: {phase.probes_unfinished}")  # fmt: skip

    def n(name: str, **labels: str) -> float:
        return m.get(name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""), 0.0)

    written = n("newsrank_scores_written_total")
    print(f"- scores stored by every scorer over the phase's last minute: {n('newsrank_scores_per_second'):.1f}/s")
    print(f"- the server's own scorer: {written:.0f} scores written ({written / phase.seconds:.1f}/s), tasks done: "
          f"{n('newsrank_scoring_tasks_total', kind='reader', outcome='done'):.0f} readers, "
          f"{n('newsrank_scoring_tasks_total', kind='refresh', outcome='done'):.0f} refreshes, "
          f"{n('newsrank_scoring_tasks_total', kind='explain', outcome='done'):.0f} explanations; dropped "
          f"{n('newsrank_scoring_dropped_total'):.0f}; queue at the end "
          f"{n('newsrank_scoring_queue_depth', kind='reader'):.0f} readers + "
          f"{n('newsrank_scoring_queue_depth', kind='refresh'):.0f} refreshes + "
          f"{n('newsrank_scoring_queue_depth', kind='explain'):.0f} explanations; rewrites kept "
          f"{n('newsrank_explanation_rewrites_total', outcome='kept'):.0f}, rejected "
          f"{n('newsrank_explanation_rewrites_total', outcome='rejected'):.0f}")  # fmt: skip
    return {"rate": rate, "p50": percentile(times, 50), "p99": percentile(times, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=40.0, help="feeds/s asked for by all clients; 0 = back to back")
    parser.add_argument("--click-every", type=int, default=4, help="every Nth request of a client is a click")
    parser.add_argument("--seconds", type=float, default=60.0, help="each cached phase")
    parser.add_argument("--baseline-seconds", type=float, default=60.0)
    parser.add_argument("--torch-threads", type=int, default=None, help="the server's torch threads")
    parser.add_argument("--probe-every", type=float, default=5.0)
    parser.add_argument("--probe-until", choices=("fresh", "covered"), default="fresh",
                        help="a probe ends when every item is `llm` or has any LLM relevance")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help="score in a `newsrank worker` process, not a thread")
    parser.add_argument("--worker-threads", type=int, default=1, help="the worker's scorer threads")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 0 < args.seconds <= 1800 and 0 < args.baseline_seconds <= 1800) or (
        args.click_every < 2
    ):
        raise SystemExit("keep it bounded: 1-64 clients, at most 30 minutes a phase, --click-every at least 2")
    rows = (files("serve") / "demo" / "articles.jsonl").read_text().splitlines()
    articles = [json.loads(r)["id"] for r in rows if r.strip()]
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        processes, base = start_server(Path(tmp), key, args.torch_threads, args.worker_threads if args.worker else 0)
        try:
            threads = args.torch_threads or "default"
            print(f"`newsrank serve` ready in {time.monotonic() - started:.0f} s; {args.clients} clients asking "
                  f"{args.rate:g} feeds/s (0: back to back), a click every {args.click_every} requests, torch "
                  f"threads {threads}")  # fmt: skip
            phases = [
                Phase("cached", fresh=False, explain=False, seconds=args.seconds),
                Phase("cached+explain", fresh=False, explain=True, seconds=args.seconds),
                Phase("baseline (fresh)", fresh=True, explain=False, seconds=args.baseline_seconds),
            ]
            results = {}
            for phase in phases:
                run_phase(base, key, phase, args.clients, args.rate, args.click_every, args.probe_every,
                          args.probe_until, articles)  # fmt: skip
                results[phase.name] = report(phase)
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)
            logs = [Path(tmp) / name for name in ("server.log", "worker.log") if (Path(tmp) / name).is_file()]
            problems = [line for log in logs for line in log.read_text().splitlines() if "ERROR" in line]
            print(f"\nserver log: {len(problems)} error lines" + "".join(f"\n  {p}" for p in problems[:5]))
    base_row = results["baseline (fresh)"]
    print("\n## against the baseline (same server, same run)")
    for name in ("cached", "cached+explain"):
        r = results[name]
        print(f"- {name}: {r['rate'] / max(base_row['rate'], 1e-9):.0f}x the feeds/s, p50 "
              f"{base_row['p50'] / max(r['p50'], 1e-9):.0f}x lower, p99 {base_row['p99'] / max(r['p99'], 1e-9):.0f}x "
              f"lower")  # fmt: skip


if __name__ == "__main__":
    main()
