from llm.listwise import Permutation, listwise_rank, parse_permutation, rank_scores, sliding_windows


def test_parse_clean_and_messy_permutations():
    assert parse_permutation("[2] > [1] > [3]", 3) == Permutation((1, 0, 2), repaired=False)
    # repeats, unknown ids and prose are dropped; missing ids appended in order
    assert parse_permutation("I think [3] > [3] > [9] > [1]", 4) == Permutation((2, 0, 1, 3), repaired=True)
    assert parse_permutation("2, 1", 3) == Permutation((1, 0, 2), repaired=True)  # bare numbers
    assert parse_permutation("", 2) == Permutation((0, 1), repaired=True)
    assert parse_permutation("In 2019 [2] > [1]", 2) == Permutation((1, 0), repaired=False)  # brackets win


def test_sliding_windows_cover_the_list_from_the_bottom():
    assert sliding_windows(5, 10, 5) == [(0, 5)]
    assert sliding_windows(20, 10, 5) == [(10, 20), (5, 15), (0, 10)]
    assert sliding_windows(12, 10, 5) == [(2, 12), (0, 7)]


def test_listwise_rank_bubbles_the_best_to_the_top():
    truth = [3, 17, 8, 0, 12, 5, 19, 1, 14, 9, 2, 11, 6, 18, 4, 15, 7, 13, 10, 16]  # higher is better

    def oracle(indices):
        order = sorted(range(len(indices)), key=lambda i: -truth[indices[i]])
        return Permutation(tuple(order), repaired=False)

    order, repairs = listwise_rank(20, oracle, window=10, step=5)
    best_first = sorted(range(20), key=lambda i: -truth[i])
    assert order[:5] == best_first[:5] and repairs == 0
    scores = rank_scores(order)
    assert scores[order[0]] == 1.0 and scores[order[-1]] == 0.0
    assert rank_scores([0]) == [1.0]
