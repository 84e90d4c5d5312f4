"""core.memo: what an instance reuses for a few seconds instead of reading the store for every feed."""

from core.memo import Memo


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_values_are_reused_for_their_seconds_then_read_again():
    clock, reads = Clock(), []
    memo: Memo[str, int] = Memo(5.0, clock=clock)

    def read(keys):
        reads.append(list(keys))
        return {k: len(k) for k in keys if k != "gone"}

    assert memo.many(["a", "bb", "gone"], read, 0) == {"a": 1, "bb": 2, "gone": 0}
    clock.now = 4.9
    assert memo.many(["bb", "ccc"], read, 0) == {"bb": 2, "ccc": 3}  # only the new key is read
    clock.now = 5.0
    assert memo.many(["a"], read, 0) == {"a": 1}
    assert reads == [["a", "bb", "gone"], ["ccc"], ["a"]]


def test_zero_seconds_reads_every_time_and_lately_is_never_true():
    clock, reads = Clock(), []
    memo: Memo[str, int] = Memo(0.0, clock=clock)
    for _ in range(3):
        memo.one("all", lambda: reads.append(1) or 7)
    assert reads == [1, 1, 1]
    assert not memo.lately("x") and not memo.lately("x")


def test_lately_marks_once_per_window_and_the_bound_holds():
    clock = Clock()
    memo: Memo[str, bool] = Memo(5.0, limit=3, clock=clock)
    assert not memo.lately("r") and memo.lately("r")
    clock.now = 6.0
    assert not memo.lately("r")
    memo.keep({"a": True, "b": True, "c": True})  # past the limit: everything kept is dropped first
    assert len(memo._kept) == 3 and "r" not in memo._kept
