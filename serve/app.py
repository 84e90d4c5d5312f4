"""The Litestar app: `create_app()` builds the heavy objects once in the lifespan and injects them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from agent import __version__
from agent.errors import BackendError, EmptyStore, InvalidInput, NewsrankError, NotFound
from agent.ranking import FeedRequest
from agent.service import Newsrank
from agent.settings import Settings
from serve.schemas import FeedOut, FeedRequestIn, WhyOut

log = logging.getLogger("newsrank.serve")

# one table from error class to HTTP status; anything else is a 500 the framework logs
ERROR_STATUS: dict[type[NewsrankError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    EmptyStore: 503,
    BackendError: 502,
    NewsrankError: 500,
}


def error_response(_: Request, exc: NewsrankError) -> Response:
    status = next(code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls))
    return Response({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@post("/v1/feed", status_code=200, sync_to_thread=True)
def feed(data: FeedRequestIn, newsrank: Newsrank) -> FeedOut:
    request = FeedRequest(data.user_id, data.k, data.explain, tuple(data.categories), data.adapter)
    return FeedOut.of(newsrank.recommend(request))


@get("/v1/why", sync_to_thread=True)
def why(user_id: str, article_id: str, newsrank: Newsrank, ranking_id: str | None = None) -> WhyOut:
    return WhyOut(user_id=user_id, article_id=article_id, answer=newsrank.why(user_id, article_id, ranking_id))


def create_app(newsrank: Newsrank | None = None, settings: Settings | None = None, seed_demo: bool = False) -> Litestar:
    """`newsrank` may be given (tests); otherwise it is built from `settings` when the app starts."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        service = newsrank or Newsrank.from_settings(settings)
        if seed_demo and service.articles.count() == 0:
            report = service.seed_demo(show_progress=False)
            log.info("store was empty: loaded %d demo articles and the demo users", report.ingested)
        service.backend.warm()
        app.state.newsrank = service
        yield

    def provide_newsrank(state: State) -> Newsrank:
        return state.newsrank

    return Litestar(
        route_handlers=[healthz, feed, why],
        lifespan=[lifespan],
        dependencies={"newsrank": Provide(provide_newsrank, sync_to_thread=False)},
        exception_handlers={NewsrankError: error_response},
        openapi_config=OpenAPIConfig(title="newsrank", version=__version__, path="/schema"),
    )
