"""Micro-batching: concurrent calls merged into shared backend calls (logic on the fake backend), and the
transformers backend scoring several readers' prefixes in shared forward passes (real packaged model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.llm import Backend, GenerateRequest, Generation, ScoreRequest
from llm.backends.batching import MicroBatcher
from llm.backends.fake import FakeBackend
from tests.conftest import random_lora

WINDOW_MS = 50.0


class GatedBackend(FakeBackend):
    """The fake LLM, but each call can be held at a gate (to let others pile up) and can fail on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        self.entered.set()
        self.gate.wait(10)
        if any(r.suffix == "boom" for r in requests):
            raise RuntimeError("the backend failed")
        return super().score(requests)


def reader(name: str, n: int) -> list[ScoreRequest]:
    return [
        ScoreRequest(f"profile of {name}: sports football", f"candidate {i} about {name} football") for i in range(n)
    ]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def in_threads(batcher: MicroBatcher, calls: dict[str, list[ScoreRequest]], inner: GatedBackend) -> dict:
    """Hold the backend busy with a first call, let `calls` pile up behind it, then release: returns each
    caller's result (or exception)."""
    inner.gate.clear()
    results: dict[str, object] = {}

    def call(name: str, requests: list[ScoreRequest]) -> None:
        try:
            results[name] = batcher.score(requests)
        except Exception as exc:  # the test inspects what each caller got
            results[name] = exc

    first = threading.Thread(target=call, args=("first", reader("first", 2)))
    first.start()
    assert inner.entered.wait(5)
    threads = [threading.Thread(target=call, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    wait_for(lambda: batcher.stats["score_calls"] == 1 + len(calls))
    inner.gate.set()
    for t in [first, *threads]:
        t.join(10)
        assert not t.is_alive(), "a caller hung"
    return results


def test_concurrent_calls_share_one_backend_call_and_each_gets_its_own_results():
    inner = GatedBackend()
    batcher = MicroBatcher(inner, max_wait_ms=WINDOW_MS)
    calls = {name: reader(name, n) for name, n in (("ann", 3), ("bob", 5), ("cy", 1))}
    results = in_threads(batcher, calls, inner)
    assert inner.calls == ["score:2", "score:9"]  # the three that waited went in together
    for name, requests in calls.items():
        assert results[name] == FakeBackend().score(requests)
    assert batcher.stats["score_batches"] == 2 and batcher.stats["score_merged_calls"] == 2
    assert batcher.stats["score_requests"] == 11


def test_an_error_reaches_only_the_call_that_caused_it_and_the_next_batch_works():
    inner = GatedBackend()
    batcher = MicroBatcher(inner, max_wait_ms=WINDOW_MS)
    calls = {"ann": reader("ann", 2), "bad": [ScoreRequest("p", "boom")]}
    results = in_threads(batcher, calls, inner)
    assert isinstance(results["bad"], RuntimeError)
    assert results["ann"] == FakeBackend().score(reader("ann", 2))  # merged with the bad call, answered all the same
    assert batcher.stats["score_merged_calls"] >= 1
    assert results["first"] == FakeBackend().score(reader("first", 2))  # the earlier batch was not affected
    assert batcher.score(reader("ann", 2)) == FakeBackend().score(reader("ann", 2))


def test_a_lone_call_waits_at_most_the_window_and_a_full_batch_does_not_wait():
    batcher = MicroBatcher(FakeBackend(), max_wait_ms=WINDOW_MS)
    start = time.perf_counter()
    assert batcher.score(reader("ann", 3)) == FakeBackend().score(reader("ann", 3))
    assert time.perf_counter() - start < (WINDOW_MS + 100) / 1000
    assert batcher.score([]) == [] and batcher.generate([]) == []

    patient = MicroBatcher(FakeBackend(), max_wait_ms=10_000, max_batch=4)
    start = time.perf_counter()
    assert len(patient.score(reader("ann", 4))) == 4  # already full: no collection window
    with ThreadPoolExecutor(2) as pool:  # two halves fill a batch together
        halves = list(pool.map(patient.score, [reader("ann", 2), reader("bob", 2)]))
    assert [len(h) for h in halves] == [2, 2]
    assert time.perf_counter() - start < 5


def test_generate_calls_are_merged_and_the_wrapper_is_a_backend():
    inner = FakeBackend()
    batcher = MicroBatcher(inner, max_wait_ms=200)
    prompts = [[GenerateRequest(f"line {i}\nanswer {i}.{j}") for j in range(i + 1)] for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(batcher.generate, prompts))
    assert [[g.text for g in out] for out in outputs] == [[r.prompt.splitlines()[-1] for r in p] for p in prompts]
    assert batcher.stats["generate_calls"] == 3 and batcher.stats["generate_batches"] < 3
    assert isinstance(batcher, Backend) and batcher.name == "fake" and batcher.adapters is inner.adapters
    assert isinstance(outputs[0][0], Generation)


# -- the real model: cross-prefix batching -------------------------------------------------------------------
PROFILES = [
    "Interests: sports, football.",
    "Interests: politics, elections, the state budget and taxes.\nRecently read: Senate passes the budget bill.",
    "Interests: technology.",
    "",  # no profile line at all: the shortest prefix
]
TITLES = [
    "Hawks win the football final in overtime (sports)",
    "New laptop chip doubles battery life (technology)",
]


def readers(llm, adapter: str | None = None) -> list[list[ScoreRequest]]:
    out = []
    for profile in PROFILES:
        question = f"Reader profile:\n{profile}\nWould this reader click on the article below? Answer Yes or No.\n"
        prefix, tail = llm.chat_prompt("You pick news articles for one reader.", question + "\x00").split("\x00")
        out.append([ScoreRequest(prefix, title + tail, adapter) for title in TITLES])
    return out


def test_several_readers_scored_together_equal_each_reader_scored_alone(llm, tmp_path):
    llm.load_adapter("random-batching", str(random_lora(tmp_path / "lora", seed=1)))
    base, adapted = readers(llm), readers(llm, "random-batching")
    assert len({len(llm.tokenizer(r[0].prefix).input_ids) for r in base}) == len(PROFILES)  # different lengths
    alone = [llm.score(r) for r in base + adapted]
    size = llm.batch_size
    try:
        llm.batch_size = 3  # batches that cut across readers
        mixed = [r for pair in zip(*base, *adapted, strict=True) for r in pair]  # interleaved readers
        together = llm.score(mixed)
    finally:
        llm.batch_size = size
    expected = [p for pair in zip(*alone, strict=True) for p in pair]
    assert together == pytest.approx(expected, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(alone[0], alone[len(PROFILES)], strict=True)) > 1e-3  # adapter matters


def test_the_batcher_over_the_real_model_returns_what_unmerged_calls_return(llm):
    per_reader = readers(llm)[:3]
    alone = [llm.score(r) for r in per_reader]
    prompt = llm.chat_prompt("Be brief.", "Name one sport played with a ball.")
    generations = [[GenerateRequest(prompt, 6)], [GenerateRequest(prompt + "Sure! One sport is", 6)]]
    generated_alone = [llm.generate(g)[0].text for g in generations]
    batcher = MicroBatcher(llm, max_wait_ms=200)  # a wide window: the threads surely meet
    with ThreadPoolExecutor(len(per_reader)) as pool:
        together = list(pool.map(batcher.score, per_reader))
        generated = [g[0].text for g in pool.map(batcher.generate, generations)]
    assert batcher.stats["score_batches"] < len(per_reader) and batcher.stats["generate_batches"] < 2
    for got, expected in zip(together, alone, strict=True):
        assert got == pytest.approx(expected, abs=1e-4)
    assert generated == generated_alone  # greedy text is the same with left padding beside another prompt
