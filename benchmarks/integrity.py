"""A stalled model and one key's flood of fresh feeds against another key's plain feeds, over HTTP.

    .venv/bin/python benchmarks/integrity.py [--seconds 30] [--rate 50] [--clients 4]

The real app under uvicorn on loopback (the demo corpus and readers, embedded Chroma, SQLite), its LLM a `vllm
serve` replica that never answers (a stub that holds every completion until the run ends). Key "flood" sends
`--rate` fresh feeds a second (each wants the model now); key "reader", with `--clients` threads back to back,
asks for plain feeds (the LLM's scores read from the store). Prints the plain feeds' p50/p99 latency and what
the flood got: the goal is a plain feed's p99 ≤ 300 ms while the model is stalled. The same run, its model
answering at once, is the baseline side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from harness import percentile, quiet_logs, serving, start_service  # benchmarks/harness.py

from config.settings import Settings
from llm.backends.tokenizer import ModelTokenizer
from llm.models import offline
from serve.service import DEMO_USERS

FLOOD, READER = "flood-key-0123456789abcdef", "reader-key-0123456789abcdef"


class Replica:
    """A stub `vllm serve`: answers every completion Yes, at once, or (`stalled`) not until the run ends."""

    def __init__(self, answer_ids: tuple[int, int]) -> None:
        self.stalled = threading.Event()
        self.done = threading.Event()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                while replica.stalled.is_set() and not replica.done.is_set():
                    time.sleep(0.05)
                prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
                top = {f"token_id:{answer_ids[0]}": -0.5, f"token_id:{answer_ids[1]}": -1.5}
                reply = {"choices": [{"index": i, "text": "Yes", "logprobs": {"top_logprobs": [top]}}
                                     for i in range(len(prompts))], "usage": {"prompt_tokens": 1}}  # fmt: skip
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run(base: str, seconds: float, rate: float, clients: int) -> tuple[list[float], Counter, Counter]:
    """Plain feeds' latencies, their statuses, and the flood's statuses."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    plain: Counter = Counter()
    flooded: Counter = Counter()
    lock = threading.Lock()

    def reader(n: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {READER}"}, timeout=60) as http:
            while time.monotonic() < stop:
                started = time.perf_counter()
                answer = http.post("/v1/feed", json={"user_id": DEMO_USERS[n % 3], "explain": False})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    plain[answer.status_code] += 1

    def flood_one(http: httpx.Client) -> None:
        try:
            answer = http.post("/v1/feed", json={"user_id": "flood-reader", "fresh": True})
            status = answer.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            flooded[status] += 1

    flooding = httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {FLOOD}"})
    with ThreadPoolExecutor(64) as pool, flooding as http:
        readers = [pool.submit(reader, n) for n in range(clients)]
        while time.monotonic() < stop:
            pool.submit(flood_one, http)
            time.sleep(1 / rate)
        for r in readers:
            r.result()
    return latencies, plain, flooded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50, help="fresh feeds a second from the flooding key")
    parser.add_argument("--clients", type=int, default=4, help="plain-feed clients of the other key")
    args = parser.parse_args()
    offline()
    quiet_logs()
    tokenizer = ModelTokenizer("smollm2-135m", Path(os.path.expanduser("~/.cache/newsrank/models")))
    tokenizer.tokenizer  # noqa: B018  (loading it reads the answer tokens' ids)
    replica = Replica(tokenizer.answer_ids)
    keys = [{"name": "flood", "key": FLOOD, "users": ["flood-*"]}, {"name": "reader", "key": READER, "users": ["*"]}]
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            data_dir=Path(folder), backend="openai", openai_urls=[replica.url], openai_timeout=600,
            api_keys=json.dumps(keys), scorer_threads=0, adapter=None, ranker=None,
            feeds_per_reader_per_minute=100_000, position_explore_share=0.0,
        )  # fmt: skip
        service = start_service(settings)
        service.add_events([{"user_id": "flood-reader", "article_id": "a001", "type": "click"}])
        print("| model | plain feeds | p50 ms | p99 ms | plain statuses | fresh feeds of the flooding key |")
        print("|---|---:|---:|---:|---|---|")
        with serving(service) as base:
            for label, stalled in (("answering at once (baseline)", False), ("stalled", True)):
                if stalled:
                    replica.stalled.set()
                latencies, plain, flooded = run(base, args.seconds, args.rate, args.clients)
                ms = [1000 * v for v in latencies]
                print(f"| {label} | {len(ms)} | {percentile(ms, 50):.0f} | {percentile(ms, 99):.0f} | "
                      f"{dict(plain)} | {dict(flooded)} |", flush=True)  # fmt: skip
            replica.done.set()
        service.feedback.close()


if __name__ == "__main__":
    main()
