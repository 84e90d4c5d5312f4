"""Property-based fuzz of the whole HTTP API from its own OpenAPI schema (schemathesis 4 + hypothesis).

    .venv/bin/python -m pytest -q tests/test_fuzz.py -p no:cacheprovider

Every request goes in-process to the real app (real Chroma, real SQLite, the fake LLM: this checks the HTTP
edge, not the model) with an admin key, and every response must keep what the README promises:

- no 5xx, and no exception out of the app (a real server turns that into a 500);
- every 4xx/5xx body is JSON `{"error": str, "detail": ...}` (plus `fields` for malformed requests), nothing else;
- an answer within `DEADLINE_S` seconds.

Four tests, so that one kind of failure does not hide the others (Hypothesis stops an operation at its first
failing explicit example):

1. `test_schema_examples_and_boundaries`: per operation, the schema's examples (known readers and articles, so
   cases get past "no such user") and schemathesis' coverage phase (boundary values and values just outside
   the schema, one field at a time);
2. `test_fuzzed_requests`: per operation, `MAX_EXAMPLES` random requests, valid and invalid;
3. `test_edge_values`: every field of every example request, in turn, set to values random generation rarely
   reaches (non-finite and huge numbers, 200,000 characters, non-Latin-1 text, NUL), odd ids in paths, and
   malformed JSON bodies;
4. `test_methods_and_paths_outside_the_schema`: each path with the methods it does not have, and unknown paths.

Cases are generated from a fixed seed (derandomized), so a run is repeatable. A reader named in a URL path is
created first (through POST /v1/events), so that the route's own code runs for that id. The server-sent-events
route is checked like the others (status, error bodies, time); its 200 body is a stream and is not parsed.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from litestar import Litestar
from schemathesis.python import asgi

from config.settings import Settings
from core.records import Event
from llm.backends.batching import MicroBatcher
from llm.backends.fake import FakeBackend
from llm.backends.metered import MeteredBackend
from retrieval.store import ChromaArticleStore, chroma_client
from serve.app import create_app
from serve.service import Newsrank
from store.sqlite import SqliteFeedbackStore
from tests.conftest import CORPUS, MODEL_CACHE, NOW

ADMIN = "fuzz-admin-key-0123456789abcdef"
KEYS = json.dumps([{"name": "fuzz", "key": ADMIN, "scope": "admin"}])
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
SEED = 20_240_601
MAX_EXAMPLES = 25  # random requests per operation in test_fuzzed_requests
DEADLINE_S = 10.0
TIMEOUT_S = DEADLINE_S + 5  # then the client gives up: a hang is a failure, not a stuck run
JOB_WAIT_S = 120.0  # a training job the fuzz starts fails within seconds (see the `app` fixture)
ERROR_KEYS = {"error", "detail"}
OPTIONAL_ERROR_KEYS = {"fields"}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")

# One valid request per operation, with readers and articles that exist. DELETE examples name their own victims,
# so that erasing them does not take "fan" or "s1" away from the operations that come after.
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/feed"): {"body": {"user_id": "fan", "k": 3, "explain": True, "filters": {"max_age_hours": 48}}},
    ("POST", "/v1/events"): {
        "body": {"events": [{"user_id": "fan", "article_id": "s3", "type": "dwell", "ts": NOW, "dwell_seconds": 5}]}
    },
    ("POST", "/v1/chat"): {
        "body": {"user_id": "fan", "article_id": "s1", "messages": [{"role": "user", "content": "why?"}]}
    },
    ("POST", "/v1/chat/stream"): {
        "body": {"user_id": "fan", "article_id": "s1", "messages": [{"role": "user", "content": "why this?"}]}
    },
    ("GET", "/v1/why"): {"query": {"user_id": "fan", "article_id": "s1"}},
    ("POST", "/v1/search"): {"body": {"user_id": "fan", "query": "football", "k": 3}},
    ("GET", "/v1/stories/{story_id}"): {"path": {"story_id": "s1"}},
    ("PUT", "/v1/users/{user_id}/follows/{story_id}"): {"path": {"user_id": "fan", "story_id": "s1"}},
    ("DELETE", "/v1/users/{user_id}/follows/{story_id}"): {"path": {"user_id": "fan", "story_id": "s2"}},
    ("POST", "/v1/articles"): {
        "body": {"articles": [{"id": "n1", "title": "Comet seen over the harbour", "published_at": NOW - 60}]}
    },
    ("GET", "/v1/articles/{article_id}"): {"path": {"article_id": "s1"}},
    ("DELETE", "/v1/articles/{article_id}"): {"path": {"article_id": "f3"}},
    ("GET", "/v1/users/{user_id}"): {"path": {"user_id": "fan"}},
    ("PATCH", "/v1/users/{user_id}"): {"path": {"user_id": "fan"}, "body": {"interests": ["space"], "mutes": []}},
    ("DELETE", "/v1/users/{user_id}"): {"path": {"user_id": "fan-gone"}},
    ("GET", "/v1/users/{user_id}/export"): {"path": {"user_id": "fan"}},
    ("POST", "/v1/adapters/{name}/activate"): {"path": {"name": "clicks"}, "body": {"version": 1}},
    ("POST", "/v1/adapters/{name}/rollback"): {"path": {"name": "clicks"}},
    ("GET", "/v1/jobs/{job_id}"): {"path": {"job_id": "abc123"}},
    ("POST", "/v1/jobs/train"): {"body": {"name": "clicks", "since": "2000-01-01T00:00:00Z"}},
}

# values that random generation from the schema rarely or never produces
LONG = "x" * 200_000
EDGE_VALUES: list[Any] = [
    "",
    LONG,
    "Zoë 東京 😀",  # not Latin-1: breaks anything that puts it into a header
    "a\x00b",
    "../..",
    "NaN",  # pydantic reads these strings as floats
    "Infinity",
    "-Infinity",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    1e308,
    -1e308,
    1e-320,
    2**63,
    -1,
    0,
    True,
    None,
    [],
    {},
]
PATH_EDGE_VALUES = ["Zoë 東京 😀", "x" * 5_000, "a b", "a/b", "\u200b", "NaN"]
MALFORMED_BODIES = [b"", b"\x00", b"{", b"[]", b"null", b"1e999", b'{"a": NaN}', '"é"'.encode("latin-1")]


def openapi() -> dict[str, Any]:
    """The app's schema, as a client downloads it, with the examples above."""
    spec = create_app(settings=Settings(api_keys=KEYS)).openapi_schema.to_schema()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            example = EXAMPLES.get((method.upper(), path), {})
            for parameter in operation.get("parameters", []):
                value = example.get(parameter["in"], {}).get(parameter["name"])
                if value is not None:
                    parameter["example"] = value
            if "body" in example:
                operation["requestBody"]["content"]["application/json"]["example"] = example["body"]
    return spec


SPEC = openapi()


def schema_with(phases: dict[str, Any]) -> schemathesis.openapi.OpenApiSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # NUL characters are test 3's, one request each: a request that hangs on one (a training job's
            # `since` did) would be shrunk by Hypothesis for many minutes, each try waiting out TIMEOUT_S
            "generation": {
                "mode": "all",
                "deterministic": True,
                "with-security-parameters": False,
                "allow-x00": False,
            },
            # methods a route does not have are test 4's, checked once each
            "phases": {"coverage": {"unexpected-methods": []}, **phases},
        }
    )
    return schemathesis.openapi.from_dict(SPEC, config=config)


BOUNDARIES = schema_with({"fuzzing": {"enabled": False}})
FUZZING = schema_with({"examples": {"enabled": False}, "coverage": {"enabled": False}})
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def app(embedder, tmp_path_factory) -> Iterator[Litestar]:
    """The real app around real stores and the fake LLM, shared by every case (like one running server)."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    articles = ChromaArticleStore(chroma_client(root / "chroma"), embedder, f"articles-{uuid.uuid4().hex[:8]}")
    articles.upsert(CORPUS)
    feedback = SqliteFeedbackStore(root / "feedback.sqlite3")
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    settings = Settings(
        data_dir=root / "data",
        model_cache=MODEL_CACHE,
        candidates=12,
        explain_top=3,
        api_keys=KEYS,
        # training jobs the fuzz starts run `newsrank train` in a child process; with no such model they fail
        # at once instead of training on the packaged LLM for minutes while the fuzz goes on
        llm=str(root / "no-such-model"),
        job_heartbeat_seconds=0.5,
        job_silence_seconds=5,
    )
    backend = MeteredBackend(MicroBatcher(FakeBackend()))  # the stack the service builds, around the fake
    started = time.monotonic()
    # the fixed clock of the corpus, ticking: a job whose runner died is found silent after `job_silence_seconds`
    service = Newsrank(settings, articles, feedback, backend, clock=lambda: NOW + time.monotonic() - started)
    yield create_app(newsrank=service)
    feedback.close()


@pytest.fixture(scope="module")
def http(app: Litestar) -> Iterator[requests.Session]:
    """A requests session into the app in-process (schemathesis' ASGI client), for requests built by hand."""
    with asgi.get_client(app) as client:
        client.headers.update(HEADERS)
        yield client


def problems(status: int, text: str, seconds: float, has_body: bool = True) -> list[str]:
    """What is wrong with one response; empty when it keeps the contract."""
    found = []
    if status >= 500:
        found.append("server error")
    if status >= 400 and has_body:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
            found.append("error body is not JSON")
        if body is not None and not (
            isinstance(body, dict)
            and ERROR_KEYS <= set(body) <= ERROR_KEYS | OPTIONAL_ERROR_KEYS
            and isinstance(body["error"], str)
        ):
            found.append("error body is not {error, detail}")
    if seconds > DEADLINE_S:
        found.append(f"took {seconds:.1f} s (more than {DEADLINE_S:g} s)")
    return found


def brief(value: Any) -> Any:
    """A value to show in a report: long strings cut to their length."""
    if isinstance(value, str) and len(value) > 120:
        return f"{value[:20]}...<{len(value)} characters>"
    if isinstance(value, dict):
        return {k: brief(v) for k, v in value.items()}
    if isinstance(value, list):
        return [brief(v) for v in value]
    return value


class Ledger:
    """Contract breaks of hand-built requests, grouped so that one bug shows once with a few examples."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {}

    def send(self, http: requests.Session, group: str, method: str, path: str, **kwargs: Any) -> int | None:
        """Send one request, note what is wrong with its answer under `group` (plus the status and the
        problem); returns the status, None when the app raised or did not answer."""
        shown = json.dumps(brief({k: v for k, v in kwargs.items() if v is not None}), default=repr)
        request = f"{method} {brief(path)} {shown[:300]}"
        start = time.perf_counter()
        try:
            response = http.request(method, path, timeout=TIMEOUT_S, **kwargs)
        except requests.Timeout:
            self.note(f"{group}: no answer within {TIMEOUT_S:g} s", request)
            return None
        except Exception as exc:  # the app raised instead of answering: a real server sends a bare 500
            self.note(f"{group}: the app raised {type(exc).__name__}", f"{request}: {str(exc)[:200]}")
            return None
        found = problems(response.status_code, response.text, time.perf_counter() - start, method != "HEAD")
        if found:
            self.note(f"{group} -> {response.status_code}: {', '.join(found)}", f"{request} -> {response.text[:200]}")
        return response.status_code

    def note(self, group: str, example: str) -> None:
        self.groups.setdefault(group, []).append(example)

    def report(self) -> str:
        lines = [f"{len(self.groups)} kinds of contract break:"]
        for group, examples in self.groups.items():
            lines.append(f"- {group} ({len(examples)} requests), e.g.")
            lines += [f"    {e}" for e in examples[:3]]
        return "\n".join(lines)


def ensure_reader(http: requests.Session, ledger: Ledger, user_id: Any) -> None:
    """A reader with this id exists, if the API accepts the id at all, so its routes run their own code."""
    if isinstance(user_id, str) and user_id:
        event = {"user_id": user_id, "article_id": "s1", "type": "impression", "ts": NOW - 60}
        ledger.send(
            http, "POST /v1/events (a reader for the next request)", "POST", "/v1/events", json={"events": [event]}
        )


def no_running_job(http: requests.Session) -> None:
    """Wait (bounded) until no training job runs, so that the next one is judged on its input, not a 409."""
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        running = [job for job in http.get("/v1/jobs", timeout=DEADLINE_S).json() if job["status"] == "running"]
        if not running:
            return
        time.sleep(0.2)
    pytest.fail(f"a training job ran for more than {JOB_WAIT_S:g} s: {running}")


def call_case(case: schemathesis.Case, app: Litestar, http: requests.Session) -> None:
    setup = Ledger()
    ensure_reader(http, setup, (case.path_parameters or {}).get("user_id"))
    assert not setup.groups, setup.report()
    label = f"{case.method} {brief(case.formatted_path)} query={brief(case.query)} body={str(brief(case.body))[:300]}"
    start = time.perf_counter()
    try:
        response = case.call(app=app, headers=HEADERS, timeout=TIMEOUT_S)
    except requests.Timeout:
        pytest.fail(f"{label}: no answer within {TIMEOUT_S:g} s")
    except Exception as exc:  # the app raised instead of answering: a real server sends a bare 500
        raise AssertionError(f"{label}: the app raised {type(exc).__name__}: {exc}") from exc
    found = problems(response.status_code, response.text, time.perf_counter() - start)
    where = f"{label} -> {response.status_code} {response.text[:500]}"
    # one assertion per kind, so that Hypothesis reports each kind of failure of an operation on its own
    assert "server error" not in found, where
    assert not [f for f in found if f.startswith("error body")], f"{found}: {where}"
    assert not found, f"{found}: {where}"


@BOUNDARIES.parametrize()
@HYPOTHESIS
def test_schema_examples_and_boundaries(case: schemathesis.Case, app: Litestar, http: requests.Session) -> None:
    call_case(case, app, http)


@FUZZING.parametrize()
@HYPOTHESIS
def test_fuzzed_requests(case: schemathesis.Case, app: Litestar, http: requests.Session) -> None:
    call_case(case, app, http)


def leaves(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The place of every field in a JSON value, containers included (the first item stands for a list)."""
    if at:
        yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*at, key))
    elif isinstance(value, list) and value:
        yield from leaves(value[0], (*at, 0))


def replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    inner = out
    for key in at[:-1]:
        inner = inner[key]
    inner[at[-1]] = new
    return out


def test_edge_values(http: requests.Session) -> None:
    """Each field of each example request, one at a time, set to each edge value; each id in a path set to
    each path edge value; each body replaced by malformed JSON. The contract holds for all."""
    ledger = Ledger()
    for (method, template), example in EXAMPLES.items():
        route = f"{method} {template}"
        path_values = example.get("path", {})
        query, body = example.get("query"), example.get("body")
        path = template.format(**{k: quote(str(v), safe="") for k, v in path_values.items()})
        before = no_running_job if template == "/v1/jobs/train" else lambda _: None
        for at in leaves(body) if body is not None else ():
            field = ".".join(map(str, at))
            for value in EDGE_VALUES:
                before(http)
                ledger.send(http, f"{route} {field}", method, path, params=query, json=replaced(body, at, value))
        for name in query or {}:
            for value in EDGE_VALUES:
                if isinstance(value, str | int | float) and not isinstance(value, bool):
                    ledger.send(http, f"{route} ?{name}", method, path, params={**query, name: value}, json=body)
        for name in path_values:
            for value in PATH_EDGE_VALUES:
                if name == "user_id":
                    ensure_reader(http, ledger, value)
                url = template.format(**{**path_values, name: quote(value, safe="")})
                ledger.send(http, f"{route} {{{name}}}", method, url, params=query, json=body)
        if body is not None:
            for raw in MALFORMED_BODIES:
                before(http)
                headers = {"Content-Type": "application/json"}
                ledger.send(http, f"{route} malformed body", method, path, params=query, data=raw, headers=headers)
    assert not ledger.groups, ledger.report()


def test_methods_and_paths_outside_the_schema(http: requests.Session) -> None:
    """A method a path does not have is a 405 and an unknown path a 404, both in the error shape."""
    ledger = Ledger()
    for template, operations in SPEC["paths"].items():
        declared = {method.upper() for method in operations}
        examples = [EXAMPLES.get((m, template), {}).get("path", {}) for m in sorted(declared)]
        path = template.format(**{k: v for e in examples for k, v in e.items()})
        for method in sorted(set(METHODS) - declared):
            ledger.send(http, f"{method} on a route without it", method, path)
    for path in ("/nope", "/v1", "/v1/nope", "/v1/users/fan/nope", "/v1/feed/extra", "/schema/nope.json"):
        ledger.send(http, "GET an unknown path", "GET", path)
    assert not ledger.groups, ledger.report()
