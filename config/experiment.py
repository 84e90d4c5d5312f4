"""A/B experiments: readers split between arms, each serving its own adapter, ranker or blend weights.

`NEWSRANK_EXPERIMENT='{"name": "clicks-v3", "arms": {"control": {"adapter": "clicks@2"}, "treatment":
{"adapter": "clicks@3"}}, "split": [50, 50]}'`. A reader's arm is a hash of their pseudonym and the experiment's
name: the same on every instance and every request (a reader stays in one arm), independent between experiments,
and not something a client can choose (the pseudonym's secret is the service's). Every ranking record names its
arm, and the stats (store/stats via `newsrank stats`, `/v1/stats?by=arm`) compare the arms.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.records import BLEND

BUCKETS = 10_000


class Arm(BaseModel):
    """What an arm serves instead of the settings: an adapter (NAME or NAME@VERSION), a learned ranker (NAME,
    NAME@VERSION or a JSON file, "none" for the hand-set weights) and blend weights (any of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    adapter: str | None = None
    ranker: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_weights(self) -> Arm:
        unknown = set(self.weights) - {spec.name for spec in BLEND}
        if unknown:
            raise ValueError(f"unknown blend weights {sorted(unknown)}; known: {[s.name for s in BLEND]}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("blend weights must be >= 0")
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=100)
    arms: dict[str, Arm] = Field(min_length=2)
    split: list[float] | None = None  # shares of readers per arm, in the arms' order; default: equal

    @model_validator(mode="after")
    def _split_matches(self) -> Experiment:
        if self.split is not None and (len(self.split) != len(self.arms) or min(self.split) < 0 or not sum(self.split)):
            raise ValueError(f"split needs one share >= 0 per arm ({len(self.arms)}), not all zero")
        return self

    def arm_of(self, pseudonym: str) -> str:
        """The arm a reader is in, from their pseudonym alone."""
        shares = self.split or [1.0] * len(self.arms)
        digest = hashlib.sha256(f"{self.name}\0{pseudonym}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % BUCKETS / BUCKETS * sum(shares)
        for name, share in zip(self.arms, shares, strict=True):
            if point < share:
                return name
            point -= share
        return [name for name, share in zip(self.arms, shares, strict=True) if share][-1]  # rounding at the top
