"""What a comment says: its stance, so that an angry "this is propaganda" counts as a dislike, not as a like.

VADER (vaderSentiment: a lexicon and rules made for short social-media text, no model to download) gives a
compound score in [−1, 1]; past ±0.05 (VADER's own threshold) a comment is for or against, else neutral.
Measured on 50 news comments labelled by hand (benchmarks/comments.tsv, `python benchmarks/stories.py stance`):
see docs/BENCHMARKS.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

NEUTRAL = 0.05  # |compound| below this: neither for nor against


@cache
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def stance(text: str) -> float:
    """The comment's compound sentiment in [−1, 1]; 0 for a neutral one."""
    score = float(_analyzer().polarity_scores(text)["compound"])
    return score if abs(score) >= NEUTRAL else 0.0
