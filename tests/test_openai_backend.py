"""The openai backend's logic around the model: spreading over replicas, retries, all replicas down, replies of
the wrong shape, runtime adapter loading. The replicas are tiny local HTTP stubs that speak vLLM's protocol;
the model's real tokenizer builds the prompts. The real thing is in test_backend_contract.py."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.errors import BackendError, NotFound
from core.llm import GenerateRequest, ScoreRequest
from llm.backends.openai import DOWN_SECONDS, OpenAIBackend
from llm.relevance import yes_probability
from tests.conftest import MODEL_CACHE, free_port

YES_LOGPROB, NO_LOGPROB = -0.4, -1.9


class Replica:
    """A stub `vllm serve`: answers completions with fixed Yes/No log-probabilities, or misbehaves on purpose."""

    def __init__(self, answer_ids: tuple[int, int], mode: str = "ok") -> None:
        self.mode = mode
        self.answer_ids = answer_ids
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.loras: set[str] = set()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                replica.hits[self.path] += 1
                models = [{"id": name} for name in ("smollm2-135m", *sorted(replica.loras))]
                self._send(200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                replica.hits[self.path] += 1
                replica.bodies.append(body)
                if self.path == "/v1/load_lora_adapter":
                    replica.loras.add(body["lora_name"])
                    self._send(200, "Success: LoRA adapter added.", plain=True)
                    return
                status, reply = replica.reply(body)
                self._send(status, reply)

            def _send(self, status: int, reply, plain: bool = False) -> None:
                data = reply.encode() if plain else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, body: dict) -> tuple[int, dict]:
        if self.mode == "500":
            return 500, {"error": {"message": "engine died"}}
        if self.mode == "error-text":  # an error dressed up as a completion: must never become a score
            return 200, {"choices": [{"index": 0, "text": "Internal error: out of memory", "logprobs": None}]}
        if body["model"] not in ("smollm2-135m", *self.loras):
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
        yes, no = self.answer_ids
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        top = {f"token_id:{yes}": YES_LOGPROB, f"token_id:{no}": NO_LOGPROB, "token_id:42": -3.0}
        choices = [{"index": i, "text": "Yes", "logprobs": {"top_logprobs": [top]}} for i in range(len(prompts))]
        if body["max_tokens"] > 1:
            choices = [{"index": 0, "text": " Football. ", "logprobs": None}]
        return 200, {"choices": choices, "usage": {"prompt_tokens": len(prompts[0]), "completion_tokens": 2}}

    def completions(self) -> int:
        return self.hits["/v1/completions"]


@pytest.fixture(scope="module")
def answer_ids() -> tuple[int, int]:
    from llm.backends.tokenizer import ModelTokenizer

    tokens = ModelTokenizer("smollm2-135m", MODEL_CACHE)
    tokens.tokenizer  # noqa: B018
    return tokens.answer_ids


@pytest.fixture
def replicas(answer_ids) -> Iterator[callable]:
    made: list[Replica] = []

    def make(mode: str = "ok") -> Replica:
        made.append(Replica(answer_ids, mode))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def backend(urls, **kwargs) -> OpenAIBackend:
    return OpenAIBackend("smollm2-135m", MODEL_CACHE, urls, **kwargs)


def reqs(n: int, adapter: str | None = None) -> list[ScoreRequest]:
    return [ScoreRequest("Reader likes sports.\n", f"Article {i}. Answer:", adapter) for i in range(n)]


def test_scores_come_from_the_answer_logprobs_and_spread_round_robin(replicas):
    a, b = replicas(), replicas()
    client = backend([a.url, b.url], batch_size=2)
    scores = client.score(reqs(8))  # 4 batches of 2
    assert scores == pytest.approx([yes_probability(YES_LOGPROB, NO_LOGPROB)] * 8)
    assert (a.completions(), b.completions()) == (2, 2)
    body = a.bodies[0]
    assert body["max_tokens"] == 1 and body["logprobs"] == 20 and body["return_tokens_as_token_ids"] is True
    assert all(isinstance(t, int) for t in body["prompt"][0])  # token ids, tokenized here
    assert client.score([]) == []


def test_a_failed_replica_is_skipped_for_a_while_then_tried_again(replicas):
    broken, good = replicas("500"), replicas()
    clock = Clock()
    client = backend([broken.url, good.url], retries=1, clock=clock)
    for _ in range(3):
        assert len(client.score(reqs(2))) == 2
    assert (broken.completions(), good.completions()) == (1, 3)  # failed over once, then skipped
    clock.now += DOWN_SECONDS + 1
    client.score(reqs(2))
    assert (broken.completions(), good.completions()) == (2, 4)  # its turn came again


def test_a_replica_that_refuses_connections_is_failed_over(replicas):
    good = replicas()
    client = backend([f"http://127.0.0.1:{free_port()}", good.url], retries=1, batch_size=1)
    assert len(client.score(reqs(3))) == 3
    assert good.completions() == 3


def test_all_replicas_down_is_a_clear_backend_error_after_bounded_retries(replicas):
    broken = replicas("500")
    down = f"http://127.0.0.1:{free_port()}"
    client = backend([broken.url, down], retries=2)
    with pytest.raises(BackendError, match="no LLM replica answered \\(3 tries\\)"):
        client.score(reqs(1))
    assert broken.completions() == 2  # tries 1 and 3; try 2 went to the down one


def test_a_reply_of_the_wrong_shape_never_becomes_model_output(replicas):
    liar = replicas("error-text")
    client = backend([liar.url], retries=3)
    with pytest.raises(BackendError, match="unexpected completion shape"):
        client.score(reqs(1))
    assert liar.completions() == 1  # a bad answer is not retried: it is reported
    generation = backend([replicas().url]).generate([GenerateRequest("Say a sport:", 8)])
    assert generation[0].text == "Football." and generation[0].completion_tokens == 2


def test_adapters_are_loaded_on_each_replica_at_first_use(replicas, tmp_path):
    a, b = replicas(), replicas()
    client = backend([a.url, b.url], batch_size=1)
    with pytest.raises(NotFound):
        client.score(reqs(1, adapter="clicks@1"))
    client.load_adapter("clicks@1", str(tmp_path))
    client.score(reqs(4, adapter="clicks@1"))
    assert a.loras == b.loras == {"clicks@1"}
    assert a.hits["/v1/load_lora_adapter"] == b.hits["/v1/load_lora_adapter"] == 1
    assert {body["model"] for body in a.bodies if "max_tokens" in body} == {"clicks@1"}
    a.loras.clear()  # a replica restarted and forgot it
    client.score(reqs(4, adapter="clicks@1"))
    assert a.loras == {"clicks@1"} and a.hits["/v1/load_lora_adapter"] == 2


def test_replicas_come_from_the_settings(monkeypatch, tmp_path):
    from config.settings import Settings
    from serve.service import make_backend

    monkeypatch.setenv("NEWSRANK_BACKEND", "openai")
    monkeypatch.setenv("NEWSRANK_OPENAI_URLS", "http://llm-1:8001/, http://llm-2:8001")
    client = make_backend(Settings(data_dir=tmp_path, model_cache=MODEL_CACHE)).inner.inner  # metered, micro-batched
    assert isinstance(client, OpenAIBackend) and client.urls == ["http://llm-1:8001", "http://llm-2:8001"]
    monkeypatch.setenv("NEWSRANK_OPENAI_URLS", " , ")
    with pytest.raises(ValueError):
        Settings()
