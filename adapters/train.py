"""LoRA training on click feedback: a linear `main(config)` over a typed config.

Every candidate's score is its answer margin s = logit(Yes) − logit(No) at the answer position; σ(s) is the
P(Yes) the ranker serves. Two objectives (`objective`):
- `pointwise`: binary cross-entropy of σ(s) against each candidate's label;
- `listwise`: the softmax cross-entropy of each click against the non-clicks of its impression (the objective
  of NRMS-style news recommenders): −log(e^s_click / (e^s_click + Σ e^s_non-click)). It only orders an
  impression's candidates, so `listwise_anchor` adds that share of the pointwise loss to keep σ(s) a
  probability the blend and the explanations can read.
Examples of one impression share their prompt prefix, so each step runs the prefix once and all its candidates
against it (as serving does): most of a step's tokens are candidates, not the profile.

    newsrank train --mind-news N --mind-behaviors B --part tune --name clicks [--config F] [--set key=value]
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
import tomllib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, field, fields
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from adapters.export import Example, grouped, in_validation, read_examples
from config.settings import PACKAGED_LLM
from core.errors import InvalidInput, require
from llm.models import offline, resolve_llm

log = logging.getLogger("newsrank.train")

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# settings that change how a run goes, not what it learns: a rerun with other values resumes the same run
HOW_IT_RUNS = frozenset({"output", "model_cache", "threads", "device", "checkpoint_every", "eval_every"})


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    data: str  # training examples (JSONL from adapters.export)
    output: str  # run folder: checkpoint/, adapter/ and card.json
    base_model: str = PACKAGED_LLM
    model_cache: str = "~/.cache/newsrank/models"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR))
    learning_rate: float = 3e-4
    objective: Literal["pointwise", "listwise"] = "listwise"  # measured better (docs/BENCHMARKS.md)
    listwise_anchor: float = 0.1  # listwise: this share of the pointwise loss added, to keep σ(s) calibrated
    epochs: int = 1
    batch_size: int = 32  # most candidates per forward pass; they share one prefix
    accumulate: int = 1  # impressions (prefix groups) per optimizer step
    packed: bool = True  # each group as one sequence with a block mask; False: the prefix cache copied per row
    attention: Literal["blocks", "masked"] = "blocks"  # a packed sequence's attention span by span, or one mask
    # save the adapter as it is after this many training examples (a learning curve from one run), under
    # OUTPUT/snapshots/N-examples; only in the first epoch
    snapshots: list[int] = field(default_factory=list)
    validation_share: float = 0.2
    max_examples: int | None = None
    seed: int = 0
    init_adapter: str | None = None  # start from this adapter folder's weights (continual training), not from zero
    checkpoint_every: int = 20  # steps
    eval_every: int = 50  # steps between validation AUCs in the TensorBoard log (and one at the end); 0: end only
    threads: int | None = None
    device: str = "cpu"  # or "cuda" on a GPU machine
    # differential privacy (adapters.private): set dp_epsilon to train with DP-SGD, each reader one example
    dp_epsilon: float | None = None
    dp_delta: float | None = None  # default 1 / the number of training readers
    dp_max_grad_norm: float = 1.0  # each reader's gradient is clipped to this norm
    dp_readers_per_step: int = 32  # expected readers per step (Poisson sampling)
    dp_examples_per_reader: int = 16  # a reader contributes at most this many rows


# what an override may set: the learning itself, never where data, output or models (or a starting adapter) are
# read or written
OVERRIDABLE = frozenset(f.name for f in fields(TrainConfig)) - {"data", "output", "base_model", "model_cache",
                                                                 "init_adapter"}  # fmt: skip


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` overrides of training settings (values parsed as JSON when they can be). The one parser for
    the command line and the API: a key is taken exactly as given, and only the keys of OVERRIDABLE."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in OVERRIDABLE:
            keys = ", ".join(sorted(OVERRIDABLE))
            raise InvalidInput(f"bad training override {item[:80]!r}; expected KEY=VALUE with KEY one of {keys}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def load_config(path: Path | None, overrides: Sequence[str], **defaults: Any) -> TrainConfig:
    """Settings from a TOML or JSON file, then `key=value` overrides (parse_overrides). Unknown keys and badly
    typed values are rejected."""
    raw: dict[str, Any] = dict(defaults)
    if path is not None:
        if not path.is_file():
            raise InvalidInput(f"no such config file: {path}")
        raw.update(tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text()))
    raw.update(parse_overrides(overrides))
    try:
        return TypeAdapter(TrainConfig).validate_python(raw)
    except ValidationError as exc:
        raise InvalidInput(f"bad training config: {exc}") from None


def split(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not in_validation(e.group, share, seed)]
    validation = [e for e in examples if in_validation(e.group, share, seed)]
    return train, validation


def orderable(examples: list[Example]) -> list[Example]:
    """The examples of prompts (one reader at one time) with both a click and a non-click. The listwise objective
    orders a click against its non-clicks; a prompt with clicks alone (say a reader's past clicks sent without
    what else they were shown) has nothing to order, and its share of the pointwise anchor would only push every
    P(Yes) up, at the cost of a training step each."""
    labels: dict[str, set[bool]] = defaultdict(set)
    for e in examples:
        labels[e.prefix].add(bool(e.label))
    return [e for e in examples if len(labels[e.prefix]) == 2]


def batches(examples: list[Example], size: int) -> list[list[Example]]:
    """Candidates grouped by their shared prefix, at most `size` per batch, in first-seen order."""
    prompts = grouped(examples, lambda e: e.prefix).values()
    return [items[i : i + size] for items in prompts for i in range(0, len(items), size)]


def data_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(config: TrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train, checkpointing as it goes; a rerun with the same output folder resumes. Returns the card."""
    offline()
    torch = require("torch", "pip install torch==2.13.0")
    transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20'")
    peft = require("peft", "pip install peft")
    from safetensors.torch import load_file
    from tqdm import tqdm

    from llm.backends.transformers import answer_token_ids, attention_implementation

    output = Path(config.output)
    checkpoint = output / "checkpoint"
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    examples = read_examples(Path(config.data))[: config.max_examples]
    train, validation = split(examples, config.validation_share, config.seed)
    if not train or not any(e.label for e in train):
        raise InvalidInput("no positive training example: nothing to learn from")
    if all(e.label for e in train):  # clicks alone (a reader's past sent without what they passed over)
        raise InvalidInput("no negative training example: clicks alone would teach the model to answer Yes to all")
    if config.objective == "listwise":
        kept = orderable(train)
        if not kept:
            raise InvalidInput(f"none of the {len(train)} training examples shares its reader's prompt with both a "
                               "click and a non-click: nothing for the listwise objective to order")  # fmt: skip
        if len(kept) < len(train):
            log.info("listwise: %d of %d training examples left out (no click or no non-click beside them)",
                     len(train) - len(kept), len(train))  # fmt: skip
        train = kept
    if config.dp_epsilon is None:
        plan, budget = batches(train, config.batch_size), None
    else:
        from adapters import private

        plan = private.readers(train, config.dp_examples_per_reader, config.seed)
        budget = private.plan(
            len(plan), config.dp_epsilon, config.dp_delta, config.dp_readers_per_step, config.epochs,
            config.dp_max_grad_norm, config.dp_examples_per_reader,
        )  # fmt: skip

    base = resolve_llm(config.base_model, Path(config.model_cache).expanduser())
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(
        base,
        dtype=torch.float32,
        attn_implementation=attention_implementation(config.attention),  # as served
    ).to(config.device)
    if config.init_adapter:  # continual: go on from an adapter's weights (its shape), not from the base model's
        model = peft.PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    else:
        lora = peft.LoraConfig(
            task_type="CAUSAL_LM", r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
        )  # fmt: skip
        model = peft.get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    answer_ids = answer_token_ids(tokenizer)
    trained = model  # what the forward passes run: the model itself, or Opacus's per-example wrapper of it
    if budget is not None:
        trained, optimizer = private.make_private(model, optimizer, budget)

    objective = partial(objective_loss, objective=config.objective, anchor=config.listwise_anchor)
    step, losses, seen = 0, [], 0  # optimizer steps are counted in groups; `seen`: training examples
    learned = {k: v for k, v in asdict(config).items() if k not in HOW_IT_RUNS}
    run_id = data_hash(Path(config.data)) + json.dumps(learned, sort_keys=True)
    if (checkpoint / "state.pt").is_file():
        # tensors and plain values only: a checkpoint is never a way to run code
        state = torch.load(checkpoint / "state.pt", weights_only=True, map_location=config.device)
        if state.get("run_id") == run_id:  # the same data and config: resume where it stopped
            peft.set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
            optimizer.load_state_dict(state["optimizer"])
            step, losses, seen = state["step"], state["losses"], state.get("seen", 0)
        else:
            log.warning("the checkpoint in %s is of other data or settings: training from the start", checkpoint)

    base_before = fingerprint(model)
    total = budget.steps if budget else config.epochs * len(plan)
    # what `tensorboard --logdir OUTPUT/tensorboard` shows: loss and learning rate per step, validation AUC
    board = require("torch.utils.tensorboard", "pip install tensorboard").SummaryWriter(str(output / "tensorboard"))
    validation_auc = None
    model.train()
    started = time.perf_counter()
    with tqdm(total=total, initial=step, desc="train", unit=" steps", disable=not show_progress) as bar:
        while step < total:
            if budget is not None:  # one DP-SGD step over the readers Poisson sampling takes
                chosen = [plan[i] for i in private.sample(len(plan), budget.sample_rate, config.seed, step)]
                loss = private.train_step(trained, optimizer, tokenizer, chosen, answer_ids, config.device, objective)
                advance, rows = 1, sum(len(r.labels) for r in chosen)
            else:
                epoch, index = divmod(step, len(plan))
                order = list(range(len(plan)))
                random.Random(config.seed + epoch).shuffle(order)  # a fixed order per epoch: resumable
                group = [plan[order[i]] for i in range(index, min(index + config.accumulate, len(plan)))]
                optimizer.zero_grad()
                loss = 0.0
                for batch in group:  # gradients summed over the step's impressions, each graph freed after its pass
                    scored = margins(model, tokenizer, batch, answer_ids, config)
                    part = objective(scored, *targets(batch, scored.device)) / sum(len(b) for b in group)
                    part.backward()
                    loss += part.item()
                optimizer.step()
                advance, rows = len(group), sum(len(b) for b in group)
            losses.append(loss)
            step += advance
            before, seen = seen, seen + rows
            bar.update(advance)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            board.add_scalar("train/loss", loss, step)
            board.add_scalar("train/learning_rate", optimizer.param_groups[0]["lr"], step)
            due = config.eval_every and step // config.eval_every > (step - advance) // config.eval_every
            if validation and (due or step == total):
                validation_auc = auc_on(model, tokenizer, validation, answer_ids, config)
                board.add_scalar("validation/auc", validation_auc, step)
            for n in config.snapshots:
                if before < n <= seen:
                    model.save_pretrained(output / "snapshots" / f"{n}-examples")
            if step // config.checkpoint_every > (step - advance) // config.checkpoint_every or step == total:
                state = {"step": step, "losses": losses, "seen": seen, "run_id": run_id}
                save_checkpoint(model, optimizer, state, checkpoint, torch)

    board.close()
    model.eval()
    adapter = output / "adapter"
    model.save_pretrained(adapter)
    card = {
        "base_model": config.base_model,
        "data": config.data,
        "data_sha256": data_hash(Path(config.data)),
        "examples": {"train": len(train), "validation": len(validation),
                     "train_positive": sum(e.label for e in train)},
        "config": asdict(config),
        "continued_from": config.init_adapter,
        "steps": step,
        "examples_seen": seen,
        "train_seconds_this_run": round(time.perf_counter() - started, 1),
        "train_loss_last_20": sum(losses[-20:]) / max(len(losses[-20:]), 1),
        "validation_auc_last": validation_auc,
        "base_weights_unchanged": fingerprint(model) == base_before,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "privacy": budget.card(step) if budget else None,
    }  # fmt: skip
    (adapter / "card.json").write_text(json.dumps(card, indent=2))
    return card


def targets(batch: list[Example], device: Any = "cpu") -> tuple[Any, Any]:
    """A batch's labels (1.0 / 0.0) and loss weights as tensors."""
    import torch

    labels = torch.tensor([float(e.label) for e in batch], device=device)
    return labels, torch.tensor([e.weight for e in batch], device=device)


def objective_loss(margins: Any, labels: Any, weights: Any, objective: str, anchor: float) -> Any:
    """`pointwise`: the summed binary cross-entropy; `listwise`: the softmax loss plus `anchor` times it."""
    pointwise = summed_loss(margins, labels, weights)
    return pointwise if objective == "pointwise" else listwise_loss(margins, labels, weights) + anchor * pointwise


def listwise_loss(margins: Any, labels: Any, weights: Any) -> Any:
    """Softmax cross-entropy of each click against every non-click of its batch (one impression's candidates),
    times the click's weight, summed. A batch without a click or without a non-click has nothing to order: 0."""
    import torch

    clicked = labels > 0
    clicks, others = margins[clicked], margins[~clicked]
    if len(clicks) == 0 or len(others) == 0:
        return margins.sum() * 0.0  # keeps the graph: backward runs and changes nothing
    logits = torch.cat([clicks[:, None], others[None, :].expand(len(clicks), -1)], dim=1)
    return ((torch.logsumexp(logits, dim=1) - clicks) * weights[clicked]).sum()


def summed_loss(margins: Any, labels: Any, weights: Any) -> Any:
    """Binary cross-entropy of each example's margin against its label, times its weight (a click's inverse
    propensity of the place it was shown at, feed.position; 1 for the rest), summed."""
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(margins, labels, weights, reduction="sum")


def margins(model: Any, tokenizer: Any, batch: list[Example], answer_ids: tuple[int, int], config: TrainConfig) -> Any:
    """The answer margins of one group of candidates that share a prefix, as serving computes them."""
    from llm.backends.transformers import answer_margins, packed_margins

    prefix, suffixes = batch[0].prefix, [e.suffix for e in batch]
    if config.packed:
        return packed_margins(model, tokenizer, [(prefix, suffixes)], answer_ids)
    prefix_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt").input_ids.to(config.device)
    cache = model(input_ids=prefix_ids, use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(batch))
    return answer_margins(model, tokenizer, suffixes, cache, prefix_ids.shape[1], answer_ids)


def auc_on(
    model: Any, tokenizer: Any, examples: list[Example], answer_ids: tuple[int, int], config: TrainConfig
) -> float:
    """Mean per-group AUC ×100 of the model as it is now on held-out examples (groups with both labels)."""
    torch = require("torch", "pip install torch==2.13.0")
    from core import metrics

    by_group: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    model.eval()
    with torch.no_grad():
        for batch in batches(examples, config.batch_size):
            for e, m in zip(batch, margins(model, tokenizer, batch, answer_ids, config).tolist(), strict=True):
                by_group[e.group][0].append(e.label)
                by_group[e.group][1].append(m)
    model.train()
    values = [a for labels, scores in by_group.values() if (a := metrics.auc(labels, scores)) is not None]
    return 100 * sum(values) / len(values) if values else 0.0


def fingerprint(model: Any) -> list[float]:
    """A cheap checksum of every frozen (base) weight: LoRA training must leave them all as they were."""
    return [float(p.detach().double().abs().sum()) for p in model.parameters() if not p.requires_grad]


def save_checkpoint(model: Any, optimizer: Any, state: dict[str, Any], checkpoint: Path, torch: Any) -> None:
    """Write beside the old checkpoint, then swap: an interruption never leaves a broken one."""
    staging = checkpoint.with_name("checkpoint.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    torch.save({**state, "optimizer": optimizer.state_dict()}, staging / "state.pt")
    old = checkpoint.with_name("checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint.exists():
        checkpoint.rename(old)
    staging.rename(checkpoint)
    shutil.rmtree(old, ignore_errors=True)
