"""Candidates scored per second by each LLM backend on this machine, on the same prompts.

    .venv/bin/python benchmarks/backend_throughput.py [--backends transformers vllm openai] [--candidates 30]
    .venv/bin/python benchmarks/backend_throughput.py --backends transformers:float32 transformers:bfloat16 \
        transformers:int8 --rounds 3                                        # the weights' number formats

The prompts are the product's own: the demo corpus is seeded into a temporary data dir and, for each demo reader
with a history, the ranking code gathers the candidates and builds the relevance requests (one shared profile
prefix per reader). Each backend is started in turn (one engine at a time: the machine is small), warmed on a
short request, then scores every reader's candidates once, one call per reader, as a feed request does. Each
reader's prompts are new to the backend when timed, so vLLM's prefix cache helps only within a reader, as the
transformers backend's KV cache does. `openai` starts a local `vllm serve` with `newsrank llm-serve`.
Ratios are against the first backend named, measured in the same run, first and again last (and each round
in turn with `--rounds`): the baseline's numbers show how much the machine's load drifted meanwhile, and the
ratios use their mean. Each backend's scores are compared with the first's: the largest difference in P(Yes)
and the rank correlation over all candidates.

`transformers:DTYPE` is the transformers backend with its weights in float32 or bfloat16 (`NEWSRANK_LLM_DTYPE`);
`transformers:int8` quantizes a float32 copy's linear layers to int8 with torch's dynamic quantization (measured
here only: it is not offered, see docs/BENCHMARKS.md).

`transformers:DTYPE:masked` computes a packed sequence's attention with one mask over all of it, as the backend did
before it went span by span (`NEWSRANK_LLM_ATTENTION=masked`). `--paired` loads every (transformers) variant at
once and times each reader's call on each in turn, `--rounds` times: each backend's speed is the median of its
calls' ratios to the first backend's call on the same reader just before, which a drifting machine moves far less
than it moves whole runs one after another:

    NEWSRANK_THREADS=1 .venv/bin/python benchmarks/backend_throughput.py --paired --rounds 10 \
        --backends transformers:float32:masked transformers:bfloat16:masked transformers:bfloat16

`--adapter PATH` scores every candidate with a PEFT adapter: `transformers:DTYPE` serves it merged into a copy of the
weights (the default), `transformers:DTYPE:lora` with PEFT's per-token low-rank products (`MERGED_ADAPTERS=0`):

    .venv/bin/python benchmarks/backend_throughput.py --adapter serve/shipped/adapter --rounds 3 \
        --backends transformers:float32:lora transformers:bfloat16:lora transformers:bfloat16
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
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


def measure(backend: Backend, batches: Sequence[Sequence[ScoreRequest]]) -> tuple[float, list[float]]:
    """Candidates per second over all batches, one score call per batch, after a short warm-up call; and the
    scores."""
    backend.score([ScoreRequest("Warm-up: ", "Answer Yes or No.")])
    start = time.perf_counter()
    scores = [p for batch in batches for p in backend.score(batch)]
    return len(scores) / (time.perf_counter() - start), scores


def open_variant(name: str, settings: Settings) -> Backend:
    """A backend by its name on the command line: vllm, openai, transformers or transformers:DTYPE[:lora][:masked]
    (`lora`: PEFT's low-rank products, not merged; `masked`: one attention mask over a packed sequence)."""
    backend, _, variant = name.partition(":")
    dtype, *flags = variant.split(":")
    if not set(flags) <= {"lora", "masked"}:
        raise SystemExit(f"unknown variant {name!r}: transformers:DTYPE[:lora][:masked]")
    if backend != "transformers" or dtype != "int8":
        update = {"backend": backend, "llm_dtype": dtype or "auto"}
        update |= {"merged_adapters": 0} if "lora" in flags else {}
        update |= {"llm_attention": "masked"} if "masked" in flags else {}
        return make_backend(settings.model_copy(update=update))
    import torch

    from llm.backends.transformers import TransformersBackend

    quantized = TransformersBackend(settings.llm, settings.model_cache, settings.batch_size, settings.threads)
    tokenizer, model = quantized._load()
    model = copy.deepcopy(model)  # the decoder's linear layers; the vocabulary projection stays float32
    layers = model.model.layers
    model.model.layers = torch.ao.quantization.quantize_dynamic(layers, {torch.nn.Linear}, dtype=torch.qint8)
    quantized._loaded = (tokenizer, model)
    return quantized


def paired(backends: dict[str, Backend], batches: Sequence[Sequence[ScoreRequest]], rounds: int) -> None:
    """Every reader's call on each backend in turn, `rounds` times over: each call's time against the first
    backend's call on the same reader just before it. On a shared machine whose speed drifts by the second,
    the median of these paired ratios holds still where whole runs one after another do not."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in backends}
    scores: dict[str, list[float]] = {name: [] for name in backends}
    for backend in backends.values():
        backend.score(batches[0][:2])  # warm
    for r in range(rounds):
        for batch in batches:
            for name, backend in backends.items():
                start = time.perf_counter()
                result = backend.score(batch)
                times[name].append(time.perf_counter() - start)
                if r == 0:
                    scores[name] += result
    first = next(iter(backends))
    n = sum(len(b) for b in batches) * rounds
    print(f"\n| backend | candidates/s | vs {first}: median of {len(times[first])} paired calls | "
          f"all calls' time | largest ΔP(Yes) | rank correlation |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, spent in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[first], spent, strict=True))
        overall = sum(times[first]) / sum(spent)
        same = agreement(scores[name], scores[first])
        print(f"| {name} | {n / sum(spent):.1f} | {ratio:.2f}x | {overall:.2f}x | {same} |")


def agreement(scores: Sequence[float], reference: Sequence[float]) -> str:
    from scipy.stats import spearmanr

    gap = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
    return f"{gap:.3f} | {spearmanr(scores, reference).statistic:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["transformers", "vllm", "openai"],
        help="the first is the baseline; transformers:float32, :bfloat16 or :int8 pick its weights",
    )
    parser.add_argument("--candidates", type=int, default=30, help="candidates per reader")
    parser.add_argument("--rounds", type=int, default=1, help="every backend this many times in turn")
    parser.add_argument("--port", type=int, default=8011, help="for the local vllm serve")
    parser.add_argument("--adapter", type=Path, help="a PEFT adapter folder every candidate is scored with")
    parser.add_argument(
        "--paired", action="store_true", help="transformers variants, all loaded: each reader's call on each in turn"
    )
    args = parser.parse_args()
    offline()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp), candidates=args.candidates)
        first = args.backends[0]
        reference = open_variant(first, base)  # builds the prompts, and is the baseline
        batches = demo_requests(base, reference)
        if args.adapter:
            batches = [[replace(r, adapter="adapter") for r in batch] for batch in batches]
        n = sum(len(b) for b in batches)
        print(f"model {base.llm}, {len(batches)} readers, {n} candidates, prefix + ~{n // len(batches)} suffixes each, "
              f"torch threads {base.threads or 'default'}")  # fmt: skip
        if args.paired:
            if not all(name.startswith("transformers") for name in args.backends):
                raise SystemExit("--paired compares transformers variants, which fit in memory together")
            backends = {name: open_variant(name, base) for name in args.backends[1:]}
            for backend in [reference, *backends.values()] if args.adapter else []:
                backend.load_adapter("adapter", str(args.adapter))
            paired({first: reference, **backends}, batches, args.rounds)
            return
        rates: dict[str, list[float]] = {name: [] for name in args.backends}
        scores: dict[str, list[float]] = {}
        order = [*args.backends * args.rounds, first]
        opened: dict[str, Backend] = {first: reference}
        for name in order:
            settings = base.model_copy(update={"openai_urls": [f"http://127.0.0.1:{args.port}"]})
            with llm_server(settings, args.port) if name == "openai" else nullcontext():
                # an in-process engine is started once and kept; a vllm serve is started for each round
                backend = opened.get(name) or open_variant(name, settings)
                if name.startswith("transformers"):
                    opened[name] = backend
                backend.warm()
                if args.adapter and "adapter" not in backend.adapters:
                    backend.load_adapter("adapter", str(args.adapter))
                rate, scores[name] = measure(backend, batches)
                if name not in opened and hasattr(backend, "close"):
                    backend.close()
            del backend
            print(f"{name}: {rate:.1f} candidates/s", flush=True)
            rates[name].append(rate)
        baseline = sum(rates[first]) / len(rates[first])
        print(f"\n| backend | candidates/s (each run) | vs {first} | largest ΔP(Yes) | rank correlation |")
        print("|---|---:|---:|---:|---:|")
        for name, runs in rates.items():
            mean = sum(runs) / len(runs)
            listed = " / ".join(f"{r:.1f}" for r in runs)
            print(f"| {name} | {listed} | {mean / baseline:.2f}x | {agreement(scores[name], scores[first])} |")


if __name__ == "__main__":
    main()
