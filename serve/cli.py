"""The `newsrank` command line. Errors become one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.errors import BackendError, EmptyStore, InvalidInput, NewsrankError, NotFound, StoreUnavailable

DEFAULT_EVAL_DATA = "../shared/data/mind-dev"  # beside the checkout, where the MIND samples live (not shipped)
EXIT_CODES: dict[type[NewsrankError], int] = {
    InvalidInput: 2,
    NotFound: 3,
    EmptyStore: 4,
    BackendError: 5,
    StoreUnavailable: 6,
}


def _service():
    from llm.models import offline

    offline()
    from serve.service import Newsrank

    return Newsrank.from_settings()


def _registry(settings):
    """The adapter registry alone, without the embedder and the LLM (for commands that only need it)."""
    from adapters.registry import AdapterRegistry
    from store import open_store

    return AdapterRegistry(settings.adapters_path, open_store(settings.store_url))


def cmd_ingest(args: argparse.Namespace) -> int:
    if not args.paths and not args.demo:
        raise InvalidInput("give one or more files to ingest, or --demo")
    service = _service()
    from serve import demo

    reports = [demo.seed(service.articles, service.feedback, service.clock())] if args.demo else []
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
    from core.records import BLEND
    from feed.recommender import FeedRequest
    from serve.schemas import FeedOut

    service = _service()
    # no background scorer runs beside a command: the LLM scores now, and what it computes is kept for the
    # service's feeds
    request = FeedRequest(args.user, args.k, args.explain, tuple(args.category or ()), args.adapter, fresh=True)
    feed = service.recommend(request)
    if args.json:
        print(FeedOut.of(feed).model_dump_json(indent=2))
        return 0
    label = " (new reader: fresh and popular picks)" if feed.cold_start else ""
    print(f"feed for {feed.user_id}{label}  ranking {feed.ranking_id}  {feed.timings['total']:.1f}s")
    print(f"{'#':>3} {'score':>5}  " + " ".join(f"{spec.short:>4}" for spec in BLEND) + "  article")
    for item in feed.items:
        r, a = item.record, item.article
        values = " ".join(f"{r.signals.get(spec.name, 0.0):4.2f}" for spec in BLEND)
        print(f"{r.position:>3} {r.score:5.3f}  {values}  [{a.category}] {a.title}  ({a.id}, {r.age_hours:.0f}h)")
        if r.explanation:
            print(f"{'':>{12 + 5 * len(BLEND)}}↳ {r.explanation}")
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    print(_service().why(args.user, args.article, args.ranking))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Replay MIND impressions. Without options: what `make serve` serves (the configured adapter and learned ranker,
    or the hand-set blend), on the first 300 held-out impressions of ../shared/data/mind-dev."""
    from config.settings import Settings
    from evaluation import replay
    from feed.learned_ranker import RankerRegistry
    from llm.models import offline
    from serve import shipped
    from serve.service import make_backend

    offline()
    settings = Settings()
    registry = _registry(settings)
    shipped.install(settings, registry)  # what a first start installs: eval may run before any serve
    default_data = args.data is None and args.news is None and args.behaviors is None
    folder = Path(args.data or DEFAULT_EVAL_DATA)
    news, behaviors = Path(args.news or folder / "news.tsv"), Path(args.behaviors or folder / "behaviors.tsv")
    if not news.is_file() or not behaviors.is_file():
        raise InvalidInput(f"no MIND data at {news} and {behaviors}: give --data FOLDER (news.tsv, behaviors.tsv)"
                           " or --news and --behaviors")  # fmt: skip
    part = args.part or ("heldout" if default_data else "all")
    limit = args.limit if args.limit is not None else (300 if default_data else None)
    adapter, ranker, methods = args.adapter, args.ranker, args.method
    if methods is None:  # what the service serves
        adapter = adapter or settings.adapter
        if ranker is None and settings.ranker:
            served = Path(settings.ranker) if settings.ranker.endswith(".json") else None
            ranker = str(served or RankerRegistry(settings.adapters_path / "rankers").path(settings.ranker)[1])
        methods = "ranker" if ranker else "blend"
        print(f"measuring what is served: {methods} with adapter {adapter or 'none (zero-shot)'}"
              + (f" and ranker {settings.ranker}" if ranker else ""))  # fmt: skip

    def adapter_folder(reference: str) -> tuple[str, Path]:
        """A PEFT adapter folder, or a registered NAME[@VERSION]: its backend name and folder."""
        if Path(reference).is_dir():
            return Path(reference).name, Path(reference)
        version = registry.resolve(reference)
        return version.key, version.path

    run = replay.EvalRun(
        news=news, behaviors=behaviors, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        part=part, limit=limit, skip=args.skip, seed=args.seed, adapter=adapter, explain=args.explain,
        ranker=Path(ranker) if ranker else None, fit_weights=args.fit_weights,
        fit_ranker=Path(args.fit_ranker) if args.fit_ranker else None,
        predictions=Path(args.predictions) if args.predictions else None,
        report=Path(args.report) if args.report else None,
        cache=Path(args.cache) if args.cache else settings.data_dir / "eval-cache",
    )  # fmt: skip
    replay.evaluate(run, settings, lambda: make_backend(settings), adapter_folder, tower=shipped.tower(settings))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Export examples, train a LoRA adapter, gate it against the served one, publish it if it is better."""
    from adapters import export, gate, train
    from adapters.registry import parse_reference
    from serve import learning

    parse_reference(args.name)
    service = _service()
    settings, registry = service.settings, service.adapters
    run_dir = Path(args.output) if args.output else settings.data_dir / "runs" / args.name
    data = Path(args.data) if args.data else run_dir / "examples.jsonl"
    if not args.data:
        if args.mind_behaviors or args.mind:
            examples = _mind_examples(args, service)
        else:
            since = _since(args.since, registry, args.name)
            weights = _propensities(service.feedback, since, settings, args.no_position_weights)
            examples = export.from_feedback(
                service.feedback, service.articles, service.backend, settings, since, service.pseudonyms, weights
            )
        if not (args.mind_behaviors or args.mind):  # MIND examples are sampled per impression
            examples = export.sample_negatives(list(examples), args.negatives, args.seed)
        if not any(e.label for e in examples):
            raise InvalidInput("no positive examples to learn from (no clicks or likes in the chosen data)")
        print(f"{export.write_examples(data, examples)} examples written to {data}")
    start = None
    if args.from_active:  # continual: from the active version's weights
        with contextlib.suppress(NotFound):
            start = str(registry.resolve(args.name).path)
        print(f"continuing from {start}" if start else f"no active {args.name}: training from the base model")
    config = train.load_config(
        Path(args.config) if args.config else None, args.set, data=str(data), output=str(run_dir),
        base_model=settings.llm, model_cache=str(settings.model_cache), seed=args.seed, init_adapter=start,
    )  # fmt: skip
    card = train.main(config)
    adapter = run_dir / "adapter"
    print(f"trained {card['steps']} steps on {card['examples']['train']} examples; adapter in {adapter}")

    _, validation = train.split(export.read_examples(data), config.validation_share, config.seed)
    served = None
    with contextlib.suppress(NotFound):  # nothing served under this name yet: the base model is the bar
        served = service.recommender.use_adapter(args.name)
    service.backend.load_adapter("candidate", str(adapter))
    decision = gate.gate(service.backend, validation, "candidate", served)
    print(decision.summary())
    references = learning.reference_sets(registry, service.feedback, args.name)
    kept = gate.forgetting(service.backend, references, "candidate", served, settings.forgetting_margin)
    print(kept.summary())
    passed = decision.passed and kept.passed
    card["gate"] = {"new": decision.new.__dict__, "served": decision.current.__dict__, "against": served or "base",
                    "forgetting": [list(c) for c in kept.checks], "passed": passed}  # fmt: skip
    card["candidate"] = bool(args.candidate and (passed or args.force))
    (adapter / "card.json").write_text(json.dumps(card, indent=2))
    gate.keep_reference(adapter, validation, settings.reference_examples, config.seed)
    if passed or args.force:
        version = registry.publish(args.name, adapter, activate=not args.candidate)
        said = "a candidate for the learning loop's A/B test" if args.candidate else "active"
        print(f"published {version.key} (id {version.id}), {said}" + (" (forced)" if not passed else ""))
        return 0
    if args.candidate:  # the loop's history says why nothing was put to the test
        service.feedback.add_loop_event("refused", args.name, {"gate": card["gate"]}, service.clock())
    print("not published (use --force to publish anyway)")
    return 0


def _mind_examples(args: argparse.Namespace, service):
    """Examples from MIND-format impressions: --mind-news/--mind-behaviors with --part, or each --mind FOLDER[:PART]
    (news.tsv and behaviors.tsv in the folder; PART all, tune or heldout, default all). Unclicked candidates are
    sampled within each impression (--negatives per click), so every impression keeps clicks to rank."""
    from adapters import export
    from evaluation import replay

    sources = [(Path(args.mind_news), Path(args.mind_behaviors), args.part)] if args.mind_behaviors else []
    for spec in args.mind or ():
        folder, _, part = spec.partition(":")
        sources.append((Path(folder) / "news.tsv", Path(folder) / "behaviors.tsv", part or "all"))
    examples: list = []
    for news, behaviors, part in sources:
        if not news.is_file():
            raise InvalidInput(f"no news file {news} (give --mind-news, or a --mind folder with news.tsv)")
        impressions, _ = replay.read_behaviors(behaviors)
        chosen = replay.select(impressions, part, args.seed, args.limit)
        corpus = replay.Corpus(news, service.articles.embedder, service.settings.data_dir / "eval-cache")
        found = export.from_mind(replay.contexts(chosen, corpus), service.backend, service.settings,
                                 service.pseudonyms, args.negatives, args.seed)  # fmt: skip
        examples += list(found)
        print(f"{behaviors}: {len(chosen)} impressions ({part} part)")
    return examples


def _since(value: str | None, registry, name: str) -> float:
    """--since TIME, or 'last': the time the active adapter of this name was trained (all events if none)."""
    from core.times import parse_time

    if value is None:
        return float("-inf")
    if value == "last":
        try:
            trained_at = registry.resolve(name).card().get("trained_at")
        except NotFound:
            return float("-inf")
        return parse_time(trained_at, float("-inf"))
    return parse_time(value, float("-inf"))


def cmd_adapters(args: argparse.Namespace) -> int:
    from config.settings import Settings

    registry = _registry(Settings())
    if args.action == "list":
        versions = registry.versions()
        if not versions:
            print("no adapters yet: `newsrank train` makes one")
        for v in versions:
            gate_auc = v.card().get("gate", {}).get("new", {}).get("auc")
            auc = f"  validation AUC {gate_auc:.2f}" if gate_auc is not None else ""
            print(f"{'*' if v.active else ' '} {v.key:<24} id {v.id:<4} {v.card().get('trained_at', '?')}{auc}")
        return 0
    if not args.reference:
        raise InvalidInput(f"adapters {args.action} needs an adapter name")
    version = registry.activate(args.reference) if args.action == "activate" else registry.rollback(args.reference)
    print(f"{version.key} is now active")
    return 0


def _versions(registry, args: argparse.Namespace, validation_auc) -> bool:
    """`list`, `activate` and `rollback` of rankers and towers alike (core.versions); False for `fit`, which is
    left to the caller. `validation_auc(name, version)`: the gate's AUC of a version, None if it has none."""
    kind = registry.kind
    if args.action == "list":
        names = [args.reference] if args.reference else registry.names()
        if not names:
            print(f"no {kind}s yet: `newsrank {kind} fit NAME` fits one on the store's impressions")
        for name in names:
            active = registry.state(name)["active"]
            for version in registry.versions(name):
                auc = validation_auc(name, version)
                print(f"{'*' if version == active else ' '} {name}@{version}"
                      + (f"  validation AUC {auc:.2f}" if auc is not None else ""))  # fmt: skip
        return True
    if not args.reference:
        raise InvalidInput(f"{kind} {args.action} needs a {kind} name")
    if args.action == "activate":
        name, _, number = args.reference.partition("@")
        if not number.isdigit():
            raise InvalidInput(f"{kind} activate needs NAME@VERSION")
        registry.activate(name, int(number))
        print(f"{args.reference} is now active")
        return True
    if args.action == "rollback":
        print(f"{args.reference}@{registry.rollback(args.reference)} is now active")
        return True
    return False


def cmd_ranker(args: argparse.Namespace) -> int:
    from config.settings import Settings
    from feed import learned_ranker

    settings = Settings()
    registry = learned_ranker.RankerRegistry(settings.adapters_path / "rankers")

    def validation_auc(name: str, version: int) -> float | None:
        gate = learned_ranker.Ranker.load(registry.root / name / f"v{version}.json").fitted_on.get("gate", {})
        return gate["new"][0] if gate else None

    if _versions(registry, args, validation_auc):
        return 0
    from core.times import parse_time
    from serve.service import reader_pseudonyms
    from store import open_store

    store = open_store(settings.store_url)
    try:
        since = parse_time(args.since, float("-inf"))
        weights = _propensities(store, since, settings, args.no_position_weights)
        done = learned_ranker.refit(
            store, registry, args.reference, since, settings.weights.frozen(), weights, args.force,
            {"source": "feedback store", "since": args.since}, split=reader_pseudonyms(settings).split,
            reader_share=settings.fit_reader_share, key_share=settings.fit_key_share,
        )  # fmt: skip
    finally:
        store.close()
    print(f"{done.rankings} rankings shown since {args.since or 'the start'}; "
          f"{done.scored} scored by {done.scorer or 'no LLM'}")  # fmt: skip
    _published(done.decision, done.version, args.reference, "RANKER", settings.ranker)
    return 0


def _published(decision, version: int | None, name: str, setting: str, served: str | None) -> None:
    """What a fit's gate said, and what it published (a ranker's or a tower's)."""
    print(decision.summary())
    if version is None:
        print("not published (use --force to publish anyway)")
        return
    print(f"published {name}@{version} and made it active{'' if decision.passed else ' (forced)'}")
    if served != name:
        print(f"serve it with NEWSRANK_{setting}={name}")


def cmd_tower(args: argparse.Namespace) -> int:
    from config.settings import Settings
    from core.times import parse_time
    from feed import tower_fit

    settings = Settings()
    registry = tower_fit.registry_of(settings.adapters_path)

    def validation_auc(name: str, version: int) -> float | None:
        gate = registry.load(f"{name}@{version}")[1].card.get("gate")
        return gate["new"][0] if gate else None

    if _versions(registry, args, validation_auc):
        return 0
    if not settings.tower:
        raise InvalidInput("no tower is served (NEWSRANK_TOWER=none), so no article has a reading to train on: "
                           "serve the shipped one (NEWSRANK_TOWER=mind) and ingest the articles again")  # fmt: skip
    if args.heads < 1 or args.epochs < 1:
        raise InvalidInput("--heads and --epochs must be at least 1")
    service = _service()
    try:
        done = tower_fit.refit(
            service.feedback, service.articles, registry, args.reference, parse_time(args.since, float("-inf")),
            service.recommender.served_tower(), args.force, split=service.pseudonyms.split,
            reader_share=settings.fit_reader_share, key_share=settings.fit_key_share, heads=args.heads,
            epochs=args.epochs,
        )  # fmt: skip
    finally:
        service.feedback.close()
    print(f"{done.rankings} rankings shown since {args.since or 'the start'} with readings to learn from")
    _published(done.decision, done.version, args.reference, "TOWER", settings.tower)
    if done.version is not None:
        print("then refit the ranker on the rankings it serves: `newsrank ranker fit`")
    return 0


def _propensities(feedback, since: float, settings, off: bool):
    """The position propensities to weight clicks by (feed.position.for_training), and what was done, printed."""
    from feed import position

    estimated, said = position.for_training(feedback, since, time.time() + 1, settings.position_explore_depth, off,
                                            settings.fit_reader_share)  # fmt: skip
    print(said)
    return estimated


def cmd_db(args: argparse.Namespace) -> int:
    from config.settings import Settings
    from store import TABLES, copy_store, open_store, redact

    settings = Settings()
    source = open_store(settings.store_url)  # opening applies any migration not applied yet
    if args.action == "status":
        print(f"{redact(source.url)}: schema version {source.schema_version} of {len(source.MIGRATIONS)}")
        for table in TABLES:
            print(f"  {table:<18} {source.count_rows(table):>10} rows")
        return 0
    if args.action == "migrate":
        print(f"{redact(source.url)} is at schema version {source.schema_version}")
        return 0
    if not args.url:
        raise InvalidInput("db migrate-to needs the URL of the new store, e.g. postgresql://USER@HOST:5432/newsrank")
    from tqdm import tqdm

    target = open_store(args.url)
    total = sum(source.count_rows(t) for t in TABLES)
    with tqdm(total=total, desc="copying", unit=" rows") as bar:
        copied = copy_store(source, target, progress=bar)
    print(f"copied {sum(copied.values())} rows into {redact(target.url)}: " + ", ".join(
        f"{n} {table}" for table, n in copied.items()))  # fmt: skip
    print(f"now serve with NEWSRANK_DATABASE_URL={redact(target.url)}; {redact(source.url)} is left as it was")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from config.settings import Settings
    from llm.models import offline
    from serve.app import create_app
    from serve.auth import KeyRing

    offline()
    settings = Settings()
    if settings.threads is None and settings.scorer_threads:
        # the API needs a core of its own beside the scorer: with torch on every core, its threads wait on each
        # other whenever a request holds one (docs/BENCHMARKS.md: p99 445 ms against 105 ms on two cores)
        settings = settings.model_copy(update={"threads": max(1, (os.cpu_count() or 2) - 1)})
    app = create_app(settings=settings, seed_demo=not args.no_demo)  # creates the admin key on first start
    base = f"http://{args.host}:{args.port}"
    from store import redact

    print(f"newsrank: data in {settings.data_dir.resolve()}, LLM {settings.llm} on {settings.backend}")
    print(f"newsrank: feedback store {redact(settings.store_url)}")
    print(f"newsrank: API docs at {base}/schema; API keys in {settings.api_keys_path.resolve()}")
    admin = next((k for k in KeyRing.from_settings(settings).keys if k.admin), None)
    if admin is not None and args.host in ("127.0.0.1", "localhost") and sys.stdout.isatty():
        # the key rides in the URL fragment, which the browser keeps to itself; shown only to a person at a
        # terminal on loopback, never into a log
        print(f"newsrank: web page {base}/#key={admin.key}")
        print(f"newsrank: operator's dashboard {base}/dashboard#key={admin.key}")
    else:
        print(f"newsrank: web page {base}/ (paste an API key from {settings.api_keys_path.resolve()})")
        print(f"newsrank: operator's dashboard {base}/dashboard (an admin key)")
    logging.getLogger("newsrank.access").setLevel(logging.INFO)
    # uvicorn's own access log would write reader ids (they are in paths); serve/telemetry.py logs route templates
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_config=None)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """The background scorer on its own, for deployments that run the API with NEWSRANK_SCORER_THREADS=0."""
    import signal
    import threading

    from llm.models import offline
    from serve.worker import ScoringWorkers

    offline()
    service = _service()
    from serve.learning import LearningLoop

    loop = LearningLoop(service) if service.settings.learning_loop else None
    workers = ScoringWorkers(service.recommender, args.threads or max(1, service.settings.scorer_threads), loop=loop)
    if args.until_idle:
        done = workers.run_until_idle()
        print(f"newsrank worker: {done} tasks done; the queue is empty")
        return 0
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    workers.start()
    print(f"newsrank worker: {len(workers.scorers)} scorer thread(s) on {service.feedback.url}; Ctrl-C stops")
    stopped.wait()
    workers.stop()
    service.feedback.close()
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Delete the events and ranking records past their retention (NEWSRANK_EVENTS_RETENTION_DAYS and
    NEWSRANK_RANKINGS_RETENTION_DAYS); the service's workers do the same every hour."""
    from config.settings import Settings
    from serve.worker import enforce_retention
    from store import open_store

    s = Settings()
    feedback = open_store(s.store_url)  # the store alone: no embedder, no LLM
    try:
        deleted = enforce_retention(feedback, s, time.time())
    finally:
        feedback.close()
    for kind, days in (("events", s.events_retention_days), ("rankings", s.rankings_retention_days)):
        print(f"{kind}: {deleted[kind]} deleted, " + (f"older than {days:g} days" if days else "no retention set"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """The five metrics over the feeds made in a window, per arm with --by arm: a table of each metric's value and
    95 % interval, and each arm's difference from the control (or everything as JSON)."""
    from config.settings import Settings
    from evaluation import stats
    from store import open_store

    settings = Settings()
    feedback = open_store(settings.store_url)
    try:
        report = stats.report(feedback, args.since, args.until, time.time(), args.bucket, args.by == "arm",
                              args.metrics.split(",") if args.metrics else (), settings.experiment)  # fmt: skip
    finally:
        feedback.close()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"feeds made {report['since']} .. {report['until']}"
          + (f", experiment {report['experiment']}" if report["experiment"] else ""))  # fmt: skip
    print(stats.table(report))
    return 0


def cmd_llm_serve(args: argparse.Namespace) -> int:
    """Replace this process with a vLLM OpenAI-compatible server: the base model and every active adapter."""
    import os
    import shlex

    from config.settings import Settings
    from llm.backends.vllm import serve_command
    from llm.models import offline

    offline()
    settings = Settings()
    active = [v for v in _registry(settings).versions() if v.active]
    command, env = serve_command(settings, active, args.host, args.port)
    command += args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    if args.print:
        print(shlex.join([f"{k}={v}" for k, v in env.items()] + command))
        return 0
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, **env})


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
    p.add_argument("--adapter", help="NAME (its active version) or NAME@VERSION; default: NEWSRANK_ADAPTER")
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

    p = commands.add_parser("eval", help="replay MIND-format impressions and compare ranking methods")
    p.add_argument("--data", help=f"a MIND folder with news.tsv and behaviors.tsv (default {DEFAULT_EVAL_DATA})")
    p.add_argument("--news", help="MIND news.tsv (instead of --data)")
    p.add_argument("--behaviors", help="MIND behaviors.tsv (instead of --data)")
    p.add_argument(
        "--method",
        help="comma-separated: random, popularity, category, embedding, llm, llm+adapter, llm-stale1, llm-stale2, "
        "llm-stale5 (the adapter's scores before the reader's last 1, 2, 5 clicks), blend, ranker "
        "(default: what the service serves, with its adapter and ranker)",
    )
    p.add_argument("--part", choices=["all", "tune", "heldout"],
                   help="the seeded half split (default: heldout with the default data, else all)")  # fmt: skip
    p.add_argument("--limit", type=int, help="the first N impressions of the part (default data: 300)")
    p.add_argument("--skip", type=int, default=0, help="skip the first N impressions of the part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", help="NAME[@VERSION] from the registry, or a PEFT adapter folder")
    p.add_argument("--explain", type=int, default=0, help="explain the blend's top N per impression")
    p.add_argument("--fit-weights", action="store_true", help="fit the blend weights on these impressions")
    p.add_argument("--ranker", help="a ranker file (JSON) for method ranker")
    p.add_argument("--fit-ranker", metavar="PATH", help="fit a learned ranker on these impressions, write it here")
    p.add_argument("--predictions", help="write MIND leaderboard predictions of the first method here")
    p.add_argument("--report", help="write a markdown report (and a PNG plot beside it) here")
    p.add_argument("--cache", help="score cache folder (default DATA_DIR/eval-cache): reruns resume")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser("train", help="train a LoRA adapter on feedback, gate it, publish it if better")
    p.add_argument("--name", required=True, help="adapter name; a better adapter becomes its next active version")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="training examples JSONL (already exported)")
    source.add_argument("--mind-behaviors", help="MIND behaviors.tsv (with --mind-news)")
    source.add_argument("--mind", action="append", metavar="FOLDER[:PART]",
                        help="a MIND folder (news.tsv, behaviors.tsv), e.g. ../shared/data/mind-train or "
                        "../shared/data/mind-dev:tune; repeatable")  # fmt: skip
    source.add_argument("--since", help="events since TIME (ISO-8601), or 'last': since the active adapter")
    p.add_argument("--mind-news", help="MIND news.tsv")
    p.add_argument("--part", default="tune", choices=["all", "tune", "heldout"], help="MIND split (default tune)")
    p.add_argument("--limit", type=int, help="MIND: the first N impressions of the part")
    p.add_argument("--negatives", type=int, default=None, help="keep at most K negatives per positive")
    p.add_argument("--config", help="training config, TOML or JSON (see adapters/train.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output", help="run folder (default DATA_DIR/runs/NAME); a rerun resumes from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="publish even if the gate finds it no better")
    p.add_argument("--no-position-weights", action="store_true", help="train on raw clicks, their positions ignored")
    p.add_argument("--from-active", action="store_true", help="start from the active version's weights (continual)")
    p.add_argument("--candidate", action="store_true",
                   help="publish inactive, for the learning loop's A/B test to decide (serve/learning.py)")  # fmt: skip
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("adapters", help="list, activate or roll back adapters")
    p.add_argument("action", choices=["list", "activate", "rollback"])
    p.add_argument("reference", nargs="?", help="NAME or NAME@VERSION")
    p.set_defaults(run=cmd_adapters)

    p = commands.add_parser("ranker", help="fit a learned ranker on the store's impressions, gate and version it")
    p.add_argument("action", choices=["fit", "list", "activate", "rollback"])
    p.add_argument("reference", nargs="?", help="NAME (fit, list, rollback) or NAME@VERSION (activate)")
    p.add_argument("--since", help="fit: rankings since TIME (ISO-8601); default: all")
    p.add_argument("--force", action="store_true", help="publish even if the gate finds it no better")
    p.add_argument("--no-position-weights", action="store_true", help="fit on raw clicks, their positions ignored")
    p.set_defaults(run=cmd_ranker)

    p = commands.add_parser("tower", help="train the LLM's match on the store's rankings, gate and version it")
    p.add_argument("action", choices=["fit", "list", "activate", "rollback"])
    p.add_argument("reference", nargs="?", help="NAME (fit, list, rollback) or NAME@VERSION (activate)")
    p.add_argument("--since", help="fit: rankings since TIME (ISO-8601); default: all")
    p.add_argument("--force", action="store_true", help="publish even if the gate finds it no better")
    p.add_argument("--heads", type=int, default=4, help="heads averaged (different seeds)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the rankings")
    p.set_defaults(run=cmd_tower)

    p = commands.add_parser("stats", help="relevance, diversity, freshness, interaction, satisfaction; per arm")
    p.add_argument("--since", help="ISO-8601 or epoch seconds; default: 7 days before --until")
    p.add_argument("--until", help="ISO-8601 or epoch seconds; default: now")
    p.add_argument("--by", choices=["arm"], help="one column per experiment arm, with differences from the control")
    p.add_argument("--bucket", choices=["day", "hour"], default="day", help="the series' step (--json)")
    p.add_argument("--metrics", help="comma-separated metric names; default: all")
    p.add_argument("--json", action="store_true", help="the whole report (with the series over time) as JSON")
    p.set_defaults(run=cmd_stats)

    p = commands.add_parser("retention", help="delete events and ranking records past their retention now")
    p.set_defaults(run=cmd_retention)

    p = commands.add_parser("db", help="the feedback store: status, migrate, or copy it into a new database")
    p.add_argument("action", choices=["status", "migrate", "migrate-to"])
    p.add_argument("url", nargs="?", help="migrate-to: the new store, postgresql://USER:PASSWORD@HOST:PORT/DB")
    p.set_defaults(run=cmd_db)

    p = commands.add_parser("serve", help="start the HTTP service (loads the demo data into an empty store)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-demo", action="store_true", help="do not load the demo data into an empty store")
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser(
        "worker", help="run the background scorer (LLM relevance and explanations ahead of requests) on its own"
    )
    p.add_argument("--threads", type=int, help="scorer threads (default: NEWSRANK_SCORER_THREADS, at least 1)")
    p.add_argument("--until-idle", action="store_true", help="sweep, do the queued tasks, then exit")
    p.set_defaults(run=cmd_worker)

    p = commands.add_parser(
        "llm-serve",
        help="start a vLLM OpenAI-compatible server: the LLM and the active adapters (for NEWSRANK_BACKEND=openai)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--print", action="store_true", help="print the command line instead of running it")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: more arguments for vLLM's server")
    p.set_defaults(run=cmd_llm_serve)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # every file newsrank writes (stores, keys, logs, runs) is for its own user only
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
