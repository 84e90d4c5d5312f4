"""Chat logic: intents, picking the item asked about, and checking the model's reply against the record."""

import pytest

from agent.chat import Message, check_messages, intent_of, main_reasons, pick_item, record_answer, valid_reply
from core.errors import InvalidInput, NotFound
from core.records import RankedItem, RankingRecord

WEIGHTS = {
    "relevance": 0.1,
    "diversity": 0.1,
    "freshness": 0.15,
    "similarity": 0.35,
    "affinity": 0.2,
    "popularity": 0.1,
}


def item(position, article_id, title, grounded_in=(), **signals):
    values = dict(relevance=0.5, diversity=0.1, freshness=0.2, similarity=0.1, affinity=0.0)
    return RankedItem(position, article_id, title, 0.5, {**values, **signals}, 3, grounded_in=grounded_in)


RECORD = RankingRecord(
    "r1", "fan", 0.0, "pointwise", "v1", "transformers", "m", None, WEIGHTS, "profile", False,
    items=(
        item(1, "s1", "Hawks beat Mariners in overtime playoff thriller", similarity=0.9,
             grounded_in=("interest: football", 'read: "Hawks clinch division"')),
        item(2, "t1", "New chip doubles battery life of laptops", freshness=0.9, popularity=0.8),
    ),
)  # fmt: skip


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("Why was this recommended?", ("why", None)),
        ("Show me less like this please", ("less", None)),
        ("I'm not interested", ("less", None)),
        ("More about Climate Change!", ("more", "climate change")),
        ("tell me more on space", ("more", "space")),
        ("More like this", ("more", None)),  # the item's own subcategory
        ("why more of these?", ("more", None)),
    ],
)
def test_intents_are_rules(question, intent):
    assert intent_of(question) == intent


def test_pick_item_by_id_position_title_or_top():
    assert pick_item(RECORD, "t1", "why?").article_id == "t1"
    assert pick_item(RECORD, None, "why is #2 here?").article_id == "t1"
    assert pick_item(RECORD, None, "what about the battery laptops story").article_id == "t1"
    assert pick_item(RECORD, None, "why?").article_id == "s1"
    with pytest.raises(NotFound):
        pick_item(RECORD, "zzz", "why?")


def test_record_answer_names_the_strongest_signals_and_the_profile_link():
    top = RECORD.items[0]
    assert main_reasons(top, WEIGHTS) == [
        "it is close to what you read",
        "the model judged it relevant to your profile",
    ]
    answer = record_answer(top, RECORD)
    assert answer.startswith('"Hawks beat Mariners') and "#1" in answer
    assert answer.endswith('It connects to your interest in football and to "Hawks clinch division", which you read.')
    second = record_answer(RECORD.items[1], RECORD)
    assert "it is fresh" in second and "many readers" in second and "connects" not in second


def test_model_replies_are_checked_against_the_record():
    facts = ["football", "Hawks clinch division", RECORD.items[0].title]
    assert valid_reply("You follow football, so this overtime win is for you. Enjoy!", facts)
    assert valid_reply("You read about the Hawks clinch division game.", facts)
    assert valid_reply("This article is about football.", facts) is None  # not said to the reader
    assert valid_reply("You might enjoy cooking recipes tonight.", facts) is None  # names nothing in the record
    assert valid_reply("You like football, see https://x.example now.", facts) is None
    assert valid_reply("You like football and", facts) is None  # cut off


def test_messages_must_end_with_a_user_question():
    check_messages([Message("user", "why?")])
    for bad in ([], [Message("assistant", "hi")], [Message("user", " ")], [Message("user", "x" * 2001)]):
        with pytest.raises(InvalidInput):
            check_messages(bad)
