"""Candidates scored per second by each LLM backend on this machine, on the same prompts.

    .venv/bin/python benchmarks/backend_throughput.py [--backends transformers vllm openai] [--candidates 30]

The prompts are the product's own: the demo corpus is seeded into a temporary data dir and, for each demo reader
with a history, the ranking code gathers the candidates and builds the relevance requests (one shared profile
prefix per reader). Each backend is started in turn (one engine at a time: the machine is small), warmed on a
short request, then scores every reader's candidates once, one call per reader, as a feed request does. Each
reader's prompts are new to the backend when timed, so vLLM's prefix cache helps only within a reader, as the
transformers backend's KV cache does. `openai` starts a local `vllm serve` with `newsrank llm-serve`.
Ratios are against transformers, measured in the same run, first and again last: the two baseline numbers
show how much the machine's load drifted meanwhile, and the ratios use their mean.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from config.settings import Settings
from core.llm import Backend, ScoreRequest
from llm.models import offline
from llm.relevance import relevance_requests
from serve import demo
from serve.service import Newsrank, make_backend

READERS = ("demo-sports", "demo-politics", "demo-tech")


def demo_requests(settings: Settings, backend: Backend) -> list[list[ScoreRequest]]:
    """Each demo reader's relevance requests, built by the ranking code."""
    service = Newsrank.from_settings(settings, backend)
    demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    batches = []
    for user in READERS:
        profile = service.recommender.profile(user)
        hits = service.recommender.candidates(profile)
        batches.append(relevance_requests(backend, profile.render(), [h.article for h in hits]))
    return batches


@contextmanager
def llm_server(settings: Settings, port: int) -> Iterator[None]:
    """A real `vllm serve` from `newsrank llm-serve`, up until the block ends."""
    import httpx

    env = {**os.environ, "NEWSRANK_DATA_DIR": str(settings.data_dir), "NEWSRANK_MODEL_CACHE": str(settings.model_cache)}
    command = [sys.executable, "-m", "serve.cli", "llm-serve", "--port", str(port)]
    log = open(settings.data_dir / "vllm-serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"vllm serve did not come up; see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        log.close()


def measure(backend: Backend, batches: Sequence[Sequence[ScoreRequest]]) -> float:
    """Candidates per second over all batches, one score call per batch, after a short warm-up call."""
    backend.score([ScoreRequest("Warm-up: ", "Answer Yes or No.")])
    start = time.perf_counter()
    for batch in batches:
        backend.score(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm", "openai"])
    parser.add_argument("--candidates", type=int, default=30, help="candidates per reader")
    parser.add_argument("--port", type=int, default=8011, help="for the local vllm serve")
    args = parser.parse_args()
    offline()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp), candidates=args.candidates)
        reference = make_backend(base)  # transformers: builds the prompts, and is the baseline
        batches = demo_requests(base, reference)
        n = sum(len(b) for b in batches)
        print(f"model {base.llm}, {len(batches)} readers, {n} candidates, prefix + ~{n // len(batches)} suffixes each")
        results: dict[str, float] = {}
        order = [*args.backends, "transformers"] if "transformers" in args.backends[:-1] else args.backends
        for name in order:
            settings = base.model_copy(update={"backend": name, "openai_urls": [f"http://127.0.0.1:{args.port}"]})
            with llm_server(settings, args.port) if name == "openai" else nullcontext():
                backend = reference if name == "transformers" else make_backend(settings)
                backend.warm()
                rate = measure(backend, batches)
                if backend is not reference and hasattr(backend, "close"):
                    backend.close()
            del backend
            print(f"{name}: {rate:.1f} candidates/s", flush=True)
            if name in results:  # the baseline again
                name = "transformers (again)"
            results[name] = rate
        runs = [rate for name, rate in results.items() if name.startswith("transformers")]
        baseline = sum(runs) / len(runs) if runs else None
        print("\n| backend | candidates/s | vs transformers |\n|---|---:|---:|")
        for name, rate in results.items():
            ratio = f"{rate / baseline:.2f}x" if baseline else "n/a"
            print(f"| {name} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
