"""Differentially private adapters: DP-SGD (Opacus) with the reader as the unit of privacy.

Each reader is one example: at most `per_reader` of their training rows (whole prompts first), packed into one
sequence (their profiles and candidates under a block mask, `packed_margins`), so clipping that one gradient
bounds all a reader can move the adapter. Each step takes every reader with probability q (Poisson sampling),
clips each reader's gradient to `max_grad_norm`, adds Gaussian noise of σ·max_grad_norm to the sum and averages
over the expected number. σ is set by Opacus's RDP accountant so that the whole run (epochs / q steps) spends at
most ε at δ (1/readers unless set): (ε, δ)-differential privacy for each reader, whatever the number of rows they
had.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import Any

from adapters.export import Example, grouped
from core.errors import InvalidInput, require

OPACUS = "pip install opacus==1.6.0"


@dataclass(frozen=True)
class Reader:
    """One reader's rows as one example: (prefix, suffixes) blocks and the labels of the suffixes in order."""

    blocks: tuple[tuple[str, tuple[str, ...]], ...]
    labels: tuple[float, ...]


def readers(examples: Sequence[Example], per_reader: int, seed: int) -> list[Reader]:
    """Group rows by reader (`group`), keeping at most `per_reader` of each reader's rows (`capped`)."""
    found = []
    for group, rows in grouped(examples, lambda e: e.group).items():
        prompts = capped(rows, per_reader, random.Random(f"{seed}:{group}"))
        found.append(
            Reader(
                tuple((items[0].prefix, tuple(e.suffix for e in items)) for items in prompts),
                tuple(float(e.label) for items in prompts for e in items),
            )
        )
    return found


def capped(rows: Sequence[Example], per_reader: int, rng: random.Random) -> list[list[Example]]:
    """At most `per_reader` of one reader's rows, by prompt: whole prompts taken in a seeded order, so that each
    keeps its clicks beside its non-clicks for the listwise objective; the prompt cut to fit keeps up to half its
    room in clicks (one at least, if it has any) and fills the rest with its non-clicks."""
    prompts = grouped(rows, lambda e: e.prefix)
    order = list(prompts)
    rng.shuffle(order)
    kept: list[list[Example]] = []
    room = per_reader
    for prefix in order:
        if room <= 0:
            break
        items = prompts[prefix]
        if len(items) > room:
            clicks, others = [e for e in items if e.label], [e for e in items if not e.label]
            rng.shuffle(clicks)
            rng.shuffle(others)
            take = min(len(clicks), max(1, room // 2) if others else room)
            items = clicks[:take] + others[: room - take]
        kept.append(items)
        room -= len(items)
    return kept


@dataclass(frozen=True)
class Budget:
    """The privacy of one run, as the adapter card states it."""

    epsilon: float  # the target; the run spends at most this
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    readers: int
    examples_per_reader: int
    unit: str = "reader"
    accountant: str = "rdp"

    def card(self, steps_done: int) -> dict[str, Any]:
        return {**asdict(self), "epsilon_spent": round(spent(self, steps_done), 4)}


def plan(
    n_readers: int, epsilon: float, delta: float | None, per_step: int, epochs: int, max_grad_norm: float,
    per_reader: int,
) -> Budget:  # fmt: skip
    """The noise that keeps `epochs` passes (steps of `per_step` readers expected) within (ε, δ)."""
    accountants = require("opacus.accountants.utils", OPACUS)
    if n_readers < 1:
        raise InvalidInput("no reader to train on")
    if epsilon <= 0:
        raise InvalidInput(f"dp_epsilon must be positive, not {epsilon}")
    delta = 1.0 / n_readers if delta is None else delta
    if not 0 < delta < 1:
        raise InvalidInput(f"dp_delta must be between 0 and 1, not {delta}")
    rate = min(1.0, per_step / n_readers)
    steps = max(1, round(epochs / rate))
    sigma = accountants.get_noise_multiplier(
        target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps, accountant="rdp"
    )
    return Budget(epsilon, delta, max_grad_norm, sigma, rate, steps, n_readers, per_reader)


def spent(budget: Budget, steps: int) -> float:
    """ε spent after `steps` steps of this budget (RDP accounting over the whole run)."""
    if steps == 0:
        return 0.0
    rdp = require("opacus.accountants", OPACUS)
    accountant = rdp.RDPAccountant()
    accountant.history = [(budget.noise_multiplier, budget.sample_rate, steps)]
    return float(accountant.get_epsilon(budget.delta))


def sample(n_readers: int, rate: float, seed: int, step: int) -> list[int]:
    """The readers of one step: each taken independently with probability `rate` (seeded per step, so a
    resumed run takes the same ones)."""
    rng = random.Random(f"{seed}:dp:{step}")
    return [i for i in range(n_readers) if rng.random() < rate]


def make_private(model: Any, optimizer: Any, budget: Budget) -> tuple[Any, Any]:
    """The model with per-example gradients and the optimizer that clips, noises and averages them."""
    grad_sample = require("opacus", OPACUS)
    # Opacus's hooks fire on module outputs (the LoRA layers' inputs need no gradient): expected, not a problem
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    module = grad_sample.GradSampleModule(model, loss_reduction="mean")
    expected = max(1, round(budget.sample_rate * budget.readers))
    private = grad_sample.optimizers.DPOptimizer(
        optimizer, noise_multiplier=budget.noise_multiplier, max_grad_norm=budget.max_grad_norm,
        expected_batch_size=expected, loss_reduction="mean",
    )  # fmt: skip
    return module, private


def train_step(
    model: Any,
    optimizer: Any,
    tokenizer: Any,
    chosen: Sequence[Reader],
    answer_ids: tuple[int, int],
    device: str,
    objective: Callable[[Any, Any, Any], Any],
) -> float:
    """One DP-SGD step over the sampled readers; returns their mean loss. A reader's loss is `objective(margins,
    labels, weights)` (train.objective_loss) of each of their prompts (blocks), summed and divided by their rows.
    Every reader's gradient is clipped and summed, then noised once. An empty sample still adds the noise
    (Poisson sampling: skipping it would leak that nobody was sampled)."""
    torch = require("torch", "pip install torch==2.13.0")
    from llm.backends.transformers import packed_margins

    losses = []
    optimizer.zero_grad()
    for i, reader in enumerate(chosen):
        labels = torch.tensor(reader.labels, device=device)
        margins = packed_margins(model, tokenizer, reader.blocks, answer_ids)
        ends = list(accumulate(len(suffixes) for _, suffixes in reader.blocks))
        ones = torch.ones_like(labels)  # a reader's rows weigh alike: the clipping bounds them together
        prompts = zip([0, *ends[:-1]], ends, strict=True)  # each prompt's candidates, ordered as outside DP
        loss = sum(objective(margins[a:b], labels[a:b], ones[a:b]) for a, b in prompts) / len(labels)
        loss.backward()
        losses.append(loss.item())
        optimizer.signal_skip_step(i < len(chosen) - 1)  # accumulate until the last reader of the step
        optimizer.step()
        if i < len(chosen) - 1:
            optimizer.zero_grad()  # frees this reader's per-example gradients; the clipped sum is kept
    if not chosen:
        for p in optimizer.params:
            p.summed_grad = torch.zeros_like(p)
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        optimizer.add_noise()
        optimizer.scale_grad()
        optimizer.original_optimizer.step()
    return sum(losses) / max(len(losses), 1)
