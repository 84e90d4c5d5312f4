"""The `newsrank` command line. Errors become one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.errors import BackendError, EmptyStore, InvalidInput, NewsrankError, NotFound

EXIT_CODES: dict[type[NewsrankError], int] = {InvalidInput: 2, NotFound: 3, EmptyStore: 4, BackendError: 5}


def _service():
    from agent.models import offline

    offline()
    from agent.service import Newsrank

    return Newsrank.from_settings()


def cmd_ingest(args: argparse.Namespace) -> int:
    if not args.paths and not args.demo:
        raise InvalidInput("give one or more files to ingest, or --demo")
    service = _service()
    reports = [service.seed_demo()] if args.demo else []
    reports += [service.ingest(Path(p), args.format) for p in args.paths]
    for report in reports:
        print(report.summary())
    print(f"store now holds {service.articles.count()} articles")
    return 0


def cmd_events_add(args: argparse.Namespace) -> int:
    report = _service().add_events_file(Path(args.file))
    print(f"{args.file}: {report.stored} events stored from {report.rows} rows, {report.malformed} malformed")
    for example in report.examples:
        print(f"  line {example.line}: {example.reason}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from agent.ranking import FeedRequest
    from serve.schemas import FeedOut

    service = _service()
    feed = service.recommend(FeedRequest(args.user, args.k, args.explain, tuple(args.category or ())))
    if args.json:
        print(FeedOut.of(feed).model_dump_json(indent=2))
        return 0
    label = " (new reader: fresh and popular picks)" if feed.cold_start else ""
    print(f"feed for {feed.user_id}{label}  ranking {feed.ranking_id}  {feed.timings['total']:.1f}s")
    print(f"{'#':>3} {'score':>5}  {'llm':>4} {'sim':>4} {'top':>4} {'pop':>4} {'new':>4} {'div':>4}  article")
    for item in feed.items:
        r, a = item.record, item.article
        print(
            f"{r.position:>3} {r.score:5.3f}  {r.relevance:4.2f} {r.similarity:4.2f} {r.affinity:4.2f} "
            f"{r.popularity:4.2f} {r.freshness:4.2f} {r.diversity:4.2f}  "
            f"[{a.category}] {a.title}  ({a.id}, {r.age_hours:.0f}h)"
        )
        if r.explanation:
            print(f"{'':>30}↳ {r.explanation}")
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    print(_service().why(args.user, args.article, args.ranking))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agent.models import offline
    from agent.settings import Settings
    from serve.app import create_app

    offline()
    settings = Settings()
    print(f"newsrank: data in {settings.data_dir.resolve()}, LLM {settings.llm} on {settings.backend}")
    print(f"newsrank: open http://{args.host}:{args.port}/healthz, POST /v1/feed, API docs at /schema")
    uvicorn.run(create_app(settings=settings, seed_demo=not args.no_demo), host=args.host, port=args.port)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="newsrank", description="A news feed that an open LLM ranks and explains.")
    top.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = top.add_subparsers(dest="command", required=True)

    p = commands.add_parser("ingest", help="load articles from JSONL or MIND news.tsv (idempotent by id)")
    p.add_argument("paths", nargs="*", help="files to load")
    p.add_argument("--format", choices=["jsonl", "mind"], help="default: from the file extension")
    p.add_argument("--demo", action="store_true", help="load the demo corpus and demo users")
    p.set_defaults(run=cmd_ingest)

    p = commands.add_parser("recommend", help="rank and explain a feed for one reader")
    p.add_argument("--user", required=True)
    p.add_argument("--k", type=int, default=10, help="items in the feed (default 10)")
    p.add_argument("--explain", action="store_true", help="write explanations for the top items")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON with every signal")
    p.set_defaults(run=cmd_recommend)

    p = commands.add_parser("why", help="why was an article recommended? (from the stored ranking record)")
    p.add_argument("--user", required=True)
    p.add_argument("--article", required=True)
    p.add_argument("--ranking", help="a ranking id; default: the latest ranking that showed the article")
    p.set_defaults(run=cmd_why)

    events = commands.add_parser("events", help="reader events").add_subparsers(dest="events", required=True)
    p = events.add_parser("add", help="store events from a JSONL file")
    p.add_argument("file")
    p.set_defaults(run=cmd_events_add)

    p = commands.add_parser("serve", help="start the HTTP service (loads the demo data into an empty store)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-demo", action="store_true", help="do not load the demo data into an empty store")
    p.set_defaults(run=cmd_serve)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except NewsrankError as exc:
        print(f"newsrank: {exc}", file=sys.stderr)
        return next((code for cls, code in EXIT_CODES.items() if isinstance(exc, cls)), 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
