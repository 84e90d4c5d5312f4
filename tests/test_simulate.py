"""The simulated readers of benchmarks/simulate.py, driven small: real services over HTTP with the packaged LLM,
readers drawn from MIND-train clicking through a position-biased model, and a candidate adapter trained on
shuffled labels that the learning loop must roll back by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (SHARED_DATA / "mind-train" / "behaviors.tsv").is_file(), reason="MIND-train is absent")
def test_a_candidate_trained_on_shuffled_labels_is_rolled_back_by_the_loop(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--bad-candidate", "--days", "2",
               "--readers", "16", "--visits", "2", "--articles-per-day", "40", "--treatment-share", "0.5",
               "--min-feeds", "5", "--max-feeds", "12"]  # fmt: skip
    env = {**os.environ, "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if re.match(r"\| (\d+|all) \|", line)]
    assert [r[0].strip() for r in rows] == ["1", "2", "all"]
    shown_ctr = [float(cell) for row in rows for cell in row[1:3]]
    assert all(0 < ctr < 1 for ctr in shown_ctr)  # readers saw feeds and clicked some of them
    bad = re.search(r"shuffled-label candidate (sim@\d+), put to .*: served to (\d+) of 16 readers", done.stdout)
    assert bad is not None, done.stdout
    key, served = bad.group(1), int(bad.group(2))
    assert 0 < served < 16  # its arm only, never everyone
    assert f"experiment {key}" in done.stdout and f"rolled-back {key}" in done.stdout
    assert re.search(r"rolled-back after day \d's visit \d", done.stdout), done.stdout
    assert f"promoted {key}" not in done.stdout


@pytest.mark.skipif(not (SHARED_DATA / "mind-train" / "behaviors.tsv").is_file(), reason="MIND-train is absent")
def test_readers_who_arrive_with_their_history_get_feeds_that_know_them(tmp_path):
    """`--onboard` sends each reader's MIND history to both services before the first day, as a platform sends its
    readers' past events: the same readers and draws then expect far more clicks from their first feeds than as
    strangers. The second service serves fixed weights here (`--fixed-weights`), so no loop runs."""
    common = [sys.executable, str(ROOT / "benchmarks" / "simulate.py"), "--days", "1", "--readers", "10",
              "--visits", "1", "--articles-per-day", "60", "--fixed-weights", '{"similarity": 0.6, "affinity": 0.3}']  # fmt: skip
    env = {**os.environ, "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE)}

    def first_day(*extra: str) -> tuple[float, float]:
        done = subprocess.run([*common, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        row = next(line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 1 |"))
        return float(row[4]), float(row[5])  # expected clicks per item: frozen, fixed weights

    strangers, known = first_day(), first_day("--onboard")
    assert known[0] > 1.3 * strangers[0] and known[1] > 1.3 * strangers[1], (strangers, known)
