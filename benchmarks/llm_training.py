"""Training the LLM on clicks: what an example costs, what the candidate text is worth, and a learning curve.

    python benchmarks/llm_training.py speed   # today's trainer and the packed one, side by side
    python benchmarks/llm_training.py texts   # the candidate texts of feed.recommender.CANDIDATE_TEXTS
    python benchmarks/llm_training.py objectives  # pointwise BCE and listwise softmax, same mind-train examples
    python benchmarks/llm_training.py curve   # adapters after 1k, 2k, 4k ... and all examples (mind-train + tune)
    python benchmarks/llm_training.py privacy # differentially private adapters on the curve's examples

`speed` trains two adapters on the same tune-part examples in one process: the trainer as it was (prompt
relevance.v1 + candidate.v2, where every candidate repeats the question's end and the chat tail, and the prefix's
cache is copied for every candidate of a padded batch) and the packed one (relevance.v2 + candidate.v3: a
candidate is its text and the answer cue; all candidates of an impression in one sequence after the prefix, with
a block mask). It prints examples per second of each, their ratio, and each adapter's AUC on held-out
impressions. `texts` trains one packed adapter per candidate text on the same tune impressions and scores each on
later tune impressions (the held-out part stays unseen). `curve` trains once on the week and the adapter's share
of the tune part, saving the adapter after 4k, 8k and 16k examples, and writes the LLM scores of each snapshot for
the held-out impressions and the ranker's shares (the tune part's rest, the week's last impressions) to `--out`, for
`newsrank ranker` and `benchmarks/ranker.py`; `curve --saved` scores the snapshots that a run still going (or
stopped) has saved. `privacy` trains an adapter per ε (`--epsilons`; inf: the non-private trainer, finite: DP-SGD
with each reader one example) on the curve's examples and scores each, and the model without an adapter, on the
held-out impressions. Scores are cached there: a rerun goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters import export, train
from config.settings import PACKAGED_LLM
from core import metrics
from core.llm import ScoreRequest
from evaluation import replay
from llm import prompts
from llm.backends.transformers import TransformersBackend
from llm.relevance import CANDIDATE_TEXTS, DEFAULT_CANDIDATE_TEXT, SYSTEM, relevance_requests
from retrieval.embed import Embedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-dev"
WEEK = DATA.parent / "mind-train"  # the MIND-small training week, before every mind-dev impression
RANKER_WEEK = 300  # the week's last impressions (by time) fit the ranker; no adapter trains on them
SPLIT = "\x00CANDIDATE\x00"
ADAPTER_PART = 500  # the first 500 tune impressions train adapters; the rest of the tune part fits the ranker


@dataclass
class Arm:
    name: str
    packed: bool
    old_prompt: bool = False
    text: str = DEFAULT_CANDIDATE_TEXT
    objective: str = "pointwise"  # the speed, texts and privacy experiments' tables were measured so
    negatives: int | None = None  # per click; None: the --negatives option


def week(show_progress: bool = True) -> tuple[list, list]:
    """mind-train's impressions replayed, in time order: (the adapters' share, the ranker's share: the last
    RANKER_WEEK impressions)."""
    impressions, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
    corpus = replay.Corpus(WEEK / "news.tsv", Embedder(), Path("data/eval-cache"), show_progress)
    ordered = sorted(impressions, key=lambda i: (i.time or 0.0, i.id))
    return list(replay.contexts(ordered[:-RANKER_WEEK], corpus)), list(replay.contexts(ordered[-RANKER_WEEK:], corpus))


def old_requests(backend, profile_text: str, articles) -> list[ScoreRequest]:
    """The prompts before relevance.v2: the question and the chat template's tail in every candidate's suffix."""
    user = prompts.render("relevance.v1", profile=profile_text, candidate=SPLIT)
    prefix, tail = backend.chat_prompt(prompts.render(SYSTEM), user).split(SPLIT)
    return [
        ScoreRequest(prefix, prompts.render("candidate.v2", title=a.title, category=a.category,
                                            subcategory=a.subcategory, abstract="") + tail)
        for a in articles
    ]  # fmt: skip


def requests_for(arm: Arm, backend, ctx, adapter: str | None = None) -> list[ScoreRequest]:
    articles = [h.article for h in ctx.hits]
    profile_text = ctx.profile.render(5)
    if arm.old_prompt:
        return [ScoreRequest(r.prefix, r.suffix, adapter) for r in old_requests(backend, profile_text, articles)]
    return relevance_requests(backend, profile_text, articles, adapter, arm.text)


def examples(arm: Arm, backend, contexts, negatives: int, seed: int = 0) -> list[export.Example]:
    """Every click of each impression and at most `negatives` unclicked candidates per click, sampled within the
    impression (so that each impression keeps clicks to order against non-clicks); grouped by reader."""
    rows = []
    for ctx in contexts:
        group = ctx.impression.user_id or ctx.impression.id
        own = [export.Example(r.prefix, r.suffix, label, ctx.impression.id)
               for r, label in zip(requests_for(arm, backend, ctx), ctx.labels, strict=True)]  # fmt: skip
        rows += [replace(e, group=group) for e in export.sample_negatives(own, negatives, seed)]
    return rows


def train_arm(arm: Arm, rows: list[export.Example], out: Path, **config) -> tuple[Path, float]:
    """Train on every row (no validation share), checkpointing every 50 steps (a rerun resumes); returns the
    adapter folder and the examples per second."""
    data = out / arm.name / "examples.jsonl"
    export.write_examples(data, rows)
    run = out / arm.name / "run"
    card = train.main(train.TrainConfig(
        data=str(data), output=str(run), packed=arm.packed, validation_share=0.0, checkpoint_every=50,
        **{"objective": arm.objective, **config},
    ))  # fmt: skip
    return run / "adapter", card["examples_seen"] / card["train_seconds_this_run"]


def score(arm: Arm, backend, contexts, adapter: str | None, cache: Path) -> dict[str, list[float]]:
    """Each impression's scores, cached by impression id in a JSONL file."""
    from tqdm import tqdm

    done: dict[str, list[float]] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["id"]] = row["scores"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a") as out:
        for ctx in tqdm([c for c in contexts if c.impression.id not in done], desc=f"score {arm.name}"):
            scores = backend.score(requests_for(arm, backend, ctx, adapter))
            done[ctx.impression.id] = scores
            out.write(json.dumps({"id": ctx.impression.id, "scores": scores}) + "\n")
            out.flush()
    return done


def auc(contexts, scores: dict[str, list[float]]) -> tuple[float, float]:
    values = [a for c in contexts if (a := metrics.auc(c.labels, scores[c.impression.id])) is not None]
    return 100 * float(np.mean(values)), 100 * metrics.standard_error(values)


def tokens_per_candidate(arm: Arm, backend, contexts) -> float:
    total = n = 0
    for ctx in contexts:
        requests = requests_for(arm, backend, ctx)
        total += backend.count_tokens(requests[0].prefix) + sum(backend.count_tokens(r.suffix) for r in requests)
        n += len(requests)
    return total / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["speed", "texts", "objectives", "curve", "privacy"])
    parser.add_argument("--train-impressions", type=int, default=60, help="speed/texts: first N tune impressions")
    parser.add_argument("--negatives", type=int, default=4, help="unclicked candidates kept per click")
    parser.add_argument("--eval-impressions", type=int, default=100)
    parser.add_argument("--snapshots", default="4000,8000,16000", help="curve: adapters saved after N examples")
    parser.add_argument("--arms", default="pointwise:8,listwise:8,listwise:4",
                        help="objectives: OBJECTIVE:NEGATIVES per arm")  # fmt: skip
    parser.add_argument("--objective", default="listwise", help="curve: the training objective")
    parser.add_argument("--tune-only", action="store_true", help="curve: the tune part alone, as before mind-train")
    parser.add_argument("--saved", action="store_true",
                        help="curve: score the snapshots saved so far, without training further")  # fmt: skip
    parser.add_argument("--out", default="data/llm-training", help="runs, examples and score caches")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--epsilons", default="inf,8,2", help="privacy: ε of each adapter (inf: not private)")
    parser.add_argument("--dp-learning-rate", type=float, default=1e-3, help="privacy: the private runs' rate")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    impressions, _ = replay.read_behaviors(DATA / "behaviors.tsv")
    corpus = replay.Corpus(DATA / "news.tsv", Embedder(), Path("data/eval-cache"))
    tune = list(replay.contexts(replay.select(impressions, "tune", 0, None), corpus))
    heldout = list(replay.contexts(replay.select(impressions, "heldout", 0, 300), corpus))
    backend = TransformersBackend(PACKAGED_LLM, Path("~/.cache/newsrank/models").expanduser(), threads=args.threads)
    config = {"threads": args.threads}

    if args.experiment == "speed":
        arms = [Arm("before", packed=False, old_prompt=True), Arm("packed", packed=True)]
        chosen, judged = tune[: args.train_impressions], heldout[: args.eval_impressions]
        print(f"{args.train_impressions} tune impressions, {args.negatives} negatives per click; "
              f"AUC on the first {len(judged)} held-out impressions")  # fmt: skip
        for arm in arms:
            rows = examples(arm, backend, chosen, args.negatives)
            adapter, speed = train_arm(arm, rows, out / "speed", **config)
            backend.load_adapter(arm.name, str(adapter))
            value, se = auc(judged, score(arm, backend, judged, arm.name, out / "speed" / arm.name / "scores.jsonl"))
            tokens = tokens_per_candidate(arm, backend, judged)
            arm.result = (len(rows), speed, value, se, tokens)  # type: ignore[attr-defined]
        print("| trainer | examples | examples/s | held-out AUC (LLM alone) | prompt tokens/candidate |")
        print("|---|---:|---:|---:|---:|")
        for arm in arms:
            n, speed, value, se, tokens = arm.result  # type: ignore[attr-defined]
            print(f"| {arm.name} | {n} | {speed:.2f} | {value:.2f} ± {se:.2f} | {tokens:.1f} |")
        print(f"speed-up: {arms[1].result[1] / arms[0].result[1]:.2f}x")  # type: ignore[attr-defined]

    elif args.experiment == "texts":
        chosen = tune[: args.train_impressions]
        judged = tune[ADAPTER_PART : ADAPTER_PART + args.eval_impressions]
        print(f"trained on the first {len(chosen)} tune impressions; AUC on {len(judged)} later tune impressions")
        print("| candidate text | examples | examples/s | AUC (LLM alone) | prompt tokens/candidate |")
        print("|---|---:|---:|---:|---:|")
        for text in CANDIDATE_TEXTS:
            arm = Arm(text, packed=True, text=text)
            rows = examples(arm, backend, chosen, args.negatives)
            adapter, speed = train_arm(arm, rows, out / "texts", **config)
            backend.load_adapter(text, str(adapter))
            value, se = auc(judged, score(arm, backend, judged, text, out / "texts" / text / "scores.jsonl"))
            print(f"| {text} | {len(rows)} | {speed:.2f} | {value:.2f} ± {se:.2f} | "
                  f"{tokens_per_candidate(arm, backend, judged):.1f} |", flush=True)  # fmt: skip

    elif args.experiment == "objectives":
        # equal examples (so equal time: an example costs the same under either objective): the first arm's
        # examples from the first --train-impressions of the week; every other arm takes impressions in the same
        # order until it has as many
        adapters_week, _ = week()
        print(f"mind-train impressions in time order; AUC on the first {len(heldout)} held-out impressions")
        print("| objective | unclicked per click | impressions | examples | examples/s | held-out AUC (LLM alone) "
              "| mean P(Yes): clicked / not |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        budget, summary = None, []
        for spec in args.arms.split(","):
            objective, negatives = spec.split(":")
            arm = Arm(f"{objective}-{negatives}", packed=True, objective=objective, negatives=int(negatives))
            rows, used = [], 0
            for ctx in adapters_week[: args.train_impressions] if budget is None else adapters_week:
                if budget is not None and len(rows) >= budget:
                    break
                rows += examples(arm, backend, [ctx], arm.negatives)
                used += 1
            rows = rows[:budget] if budget else rows
            budget = budget or len(rows)
            adapter, speed = train_arm(arm, rows, out / "objectives", objective=objective, **config)
            backend.load_adapter(arm.name, str(adapter))
            scores = score(arm, backend, heldout, arm.name, out / "objectives" / arm.name / "heldout.jsonl")
            value, se = auc(heldout, scores)
            clicked = [s for c in heldout for s, y in zip(scores[c.impression.id], c.labels, strict=True) if y]
            passed = [s for c in heldout for s, y in zip(scores[c.impression.id], c.labels, strict=True) if not y]
            print(f"| {objective} | {negatives} | {used} | {len(rows)} | {speed:.2f} | {value:.2f} ± {se:.2f} | "
                  f"{np.mean(clicked):.3f} / {np.mean(passed):.3f} |", flush=True)  # fmt: skip
            summary.append({"objective": objective, "negatives": int(negatives), "auc": value, "se": se})
        (out / "objectives" / "summary.json").write_text(json.dumps(summary, indent=1))

    elif args.experiment == "privacy":
        arm = Arm("curve", packed=True)
        rows = examples(arm, backend, tune[:ADAPTER_PART], args.negatives)
        print(f"{len(rows)} examples of {len({r.group for r in rows})} readers; AUC on {len(heldout)} held-out")
        print("| adapter | ε | δ | noise multiplier | readers/step | steps | examples/s | AUC (LLM alone), held-out |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        value, se = auc(heldout, score(arm, backend, heldout, None, out / "privacy" / "heldout-none.jsonl"))
        print(f"| none (zero-shot) | – | – | – | – | – | – | {value:.2f} ± {se:.2f} |", flush=True)
        for epsilon in map(float, args.epsilons.split(",")):  # inf: the non-private trainer, as the curve ran it
            name = f"dp-{epsilon:g}"
            private = {"dp_epsilon": epsilon, "learning_rate": args.dp_learning_rate} if epsilon < float("inf") else {}
            adapter, speed = train_arm(Arm(name, packed=True), rows, out / "privacy", **private, **config)
            card = json.loads((adapter / "card.json").read_text())
            backend.load_adapter(name, str(adapter))
            value, se = auc(heldout, score(arm, backend, heldout, name, out / "privacy" / f"heldout-{name}.jsonl"))
            dp = card["privacy"] or {"epsilon_spent": float("inf"), "delta": 0.0, "noise_multiplier": 0.0,
                                     "sample_rate": 1.0, "readers": 1, "steps": card["steps"]}  # fmt: skip
            print(f"| {'DP-SGD' if card['privacy'] else 'not private'} | {dp['epsilon_spent']:.2f} | "
                  f"{dp['delta']:.1e} | {dp['noise_multiplier']:.2f} | {dp['sample_rate'] * dp['readers']:.0f} | "
                  f"{dp['steps']} | {speed:.2f} | {value:.2f} ± {se:.2f} |", flush=True)  # fmt: skip

    else:
        # the adapters learn from the week (but its last RANKER_WEEK impressions) and the tune part's first 500;
        # the ranker is fitted on what no adapter saw: the week's last impressions and the rest of the tune part
        arm = Arm("curve", packed=True, objective=args.objective)
        adapters_week, ranker_week = ([], []) if args.tune_only else week()
        name = "curve" if args.tune_only else f"curve-{args.objective}-{args.negatives}"
        if args.saved:  # a run still going (or stopped): what it has saved so far
            saved = (out / name / arm.name / "run" / "snapshots").glob("*-examples")
            snapshots = {p.name.split("-")[0]: p for p in sorted(saved, key=lambda p: int(p.name.split("-")[0]))}
        else:
            rows = examples(arm, backend, [*adapters_week, *tune[:ADAPTER_PART]], args.negatives)
            sizes = [n for n in map(int, args.snapshots.split(",")) if n < len(rows)]
            adapter, speed = train_arm(arm, rows, out / name, snapshots=sizes, objective=args.objective, **config)
            print(f"trained on {len(rows)} examples at {speed:.2f} examples/s")
            snapshots = {f"{n}": adapter.parent / "snapshots" / f"{n}-examples" for n in sizes}
            snapshots |= {f"{len(rows)}": adapter}
        print("| examples | AUC (LLM alone), held-out |")
        print("|---:|---:|")
        for size, folder in reversed(snapshots.items()):  # the largest first: the default adapter's scores
            backend.load_adapter(f"after-{size}", str(folder))
            parts = (("heldout", heldout), ("ranker", tune[ADAPTER_PART:]), ("ranker-week", ranker_week))
            for part, contexts in parts:
                scores = score(arm, backend, contexts, f"after-{size}", out / name / f"{part}-{size}.jsonl")
                if part == "heldout":
                    value, se = auc(heldout, scores)
            print(f"| {size} | {value:.2f} ± {se:.2f} |", flush=True)


if __name__ == "__main__":
    main()
