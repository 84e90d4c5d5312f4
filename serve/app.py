"""The Litestar app: `create_app()` builds the heavy objects once in the lifespan and injects them.

Routes live in serve/api.py (the JSON API) and serve/web.py (the page for people); this module wires them
together with the error table, authentication and metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.resources import files

from litestar import Litestar, Request, Response
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import ResponseHeader, State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.template.config import TemplateConfig

from config.settings import Settings
from core import __version__
from core.errors import (
    BackendError,
    Conflict,
    EmptyStore,
    InvalidInput,
    NewsrankError,
    NotFound,
    RateLimited,
    StoreUnavailable,
)
from serve import api, demo, web
from serve.auth import ApiKeyMiddleware, KeyRing, NotAuthenticated, PermissionDenied
from serve.learning import LearningLoop
from serve.limits import RateLimiter
from serve.service import Newsrank
from serve.telemetry import Metrics, RequestMetrics
from serve.worker import ScoringWorkers

log = logging.getLogger("newsrank.serve")

# one table from error class to HTTP status; anything else is a 500, logged with its traceback
ERROR_STATUS: dict[type[NewsrankError], int] = {
    NotAuthenticated: 401,
    PermissionDenied: 403,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    EmptyStore: 503,
    StoreUnavailable: 503,
    RateLimited: 429,
    BackendError: 502,
    NewsrankError: 500,
}


# every response: no sniffing, no framing, no referrer, and a page that loads nothing from elsewhere
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' "
    "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
}


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception becomes, as the handlers below answer it."""
    if isinstance(exc, NewsrankError):
        return next(code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls))
    return exc.status_code if isinstance(exc, HTTPException) and exc.status_code < 500 else 500


def error_response(_: Request, exc: NewsrankError) -> Response:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return Response({"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers)


def http_error_response(request: Request, exc: HTTPException) -> Response:
    """The framework's own errors (no such route, a method not allowed, a body too large) in the same shape."""
    if exc.status_code >= 500:
        return internal_error_response(request, exc)
    try:
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
    except ValueError:
        name = "HTTPError"
    return Response({"error": name, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def internal_error_response(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback (route template only: ids stay out of logs), answered in the one shape."""
    route = request.scope.get("path_template") or "?"
    log.error("%s %s failed", request.method, route, exc_info=exc)
    body = {"error": "InternalError", "detail": "the request failed inside the service; it was logged"}
    return Response(body, status_code=500)


def validation_response(_: Request, exc: ValidationException) -> Response:
    """Malformed requests get the same error body as every other error, with the fields at fault."""
    body = {"error": "InvalidInput", "detail": exc.detail, "fields": exc.extra or []}
    return Response(body, status_code=400)


def create_app(newsrank: Newsrank | None = None, settings: Settings | None = None, seed_demo: bool = False) -> Litestar:
    """`newsrank` may be given (tests); otherwise it is built from `settings` when the app starts."""
    settings = newsrank.settings if newsrank else settings or Settings()
    keys = KeyRing.from_settings(settings)
    requests = RateLimiter(settings.requests_per_key_per_minute, time.monotonic)  # each key's, all routes
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        service = newsrank or Newsrank.from_settings(settings)
        service.check_configuration()
        if seed_demo and service.articles.count() == 0:
            report = demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
            log.info("store was empty: loaded %d demo articles and the demo users", report.ingested)
        service.jobs.recover()
        service.backend.warm()
        loop = LearningLoop(service) if settings.learning_loop else None
        workers = ScoringWorkers(service.recommender, settings.scorer_threads, loop=loop)
        workers.start()
        app.state.newsrank = service
        try:
            yield
        finally:
            workers.stop()
            if newsrank is None:  # built here: release its database connections
                service.feedback.close()

    def provide_newsrank(state: State) -> Newsrank:
        return state.newsrank

    return Litestar(
        route_handlers=[*api.ROUTES, *web.ROUTES],
        lifespan=[lifespan],
        dependencies={
            "newsrank": Provide(provide_newsrank, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, sync_to_thread=False, use_cache=True),
        },
        middleware=[
            RequestMetrics(metrics, status_of),
            DefineMiddleware(ApiKeyMiddleware, keys=keys, exclude=["^/schema"], requests=requests),
        ],
        exception_handlers={
            NewsrankError: error_response,
            ValidationException: validation_response,
            HTTPException: http_error_response,
            Exception: internal_error_response,
        },
        response_headers=[ResponseHeader(name=k, value=v) for k, v in SECURITY_HEADERS.items()],
        template_config=TemplateConfig(directory=str(files("serve") / "templates"), engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(
            title="newsrank",
            version=__version__,
            path="/schema",
            description="A ranked and explained news feed per reader. Send 'Authorization: Bearer KEY'.",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="an API key")}
            ),
            security=[{"apiKey": []}],
        ),
    )
