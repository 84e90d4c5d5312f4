import numpy as np

from feed.explain import Grounding, choose, cites, clean, ground, template_explanation, validate
from feed.profile import HistoryItem, Profile
from tests.conftest import article

HAWKS = HistoryItem("s1", "Riverton Hawks beat Lakeport Mariners in overtime", "sports", np.array([1.0, 0.0]))
GROUNDED = Grounding(interests=("sports",), history=HAWKS)
CANDIDATE = article("c", "Hawks clinch the division title", "sports")


def test_ground_finds_interests_and_the_closest_history_title():
    profile = Profile("u", history=(HAWKS,), category_shares={"sports": 1.0})
    profile = Profile("u", interests=(), history=(HAWKS,), explicit=("sports",))
    g = ground(profile, CANDIDATE, np.array([0.9, 0.1]))
    assert g.interests == ("sports",) and g.history is HAWKS
    assert g.facts == ("interest: sports", 'read: "Riverton Hawks beat Lakeport Mariners in overtime"')
    far = ground(profile, article("d", "Pasta", "food"), np.array([0.0, 1.0]))
    assert far.facts == ()


def test_clean_keeps_one_complete_sentence_and_drops_invented_asides():
    assert clean('Assistant: "You will like it. More text."') == "You will like it."
    assert clean("You may like this because it is about sports, but it also has aliens.") == (
        "You may like this because it is about sports."
    )
    assert clean("You may like this because it is about") == ""  # cut off by the token limit


def test_validate_requires_grounding_and_the_reader():
    both = "You may like this because you follow sports and read about the Riverton Hawks and Lakeport Mariners."
    assert validate(both, GROUNDED) == both
    assert validate("You may like this because it is about sports.", Grounding(interests=("sports",)))
    assert validate("You read about the Riverton Hawks and Lakeport Mariners before.", Grounding(history=HAWKS))
    assert validate("This article is about sports.", Grounding(interests=("sports",))) is None  # not to the reader
    assert validate("You may like this because it is about cooking.", GROUNDED) is None  # not grounded
    assert validate("You may like sports, as an AI I think so.", Grounding(interests=("sports",))) is None
    assert validate("You may like this because it is about sports.", Grounding()) is None  # nothing to cite
    assert not cites("sportswear is on sale", Grounding(interests=("sports",)))  # whole words only


def test_a_rewrite_less_specific_than_the_template_is_not_kept():
    # the template names the interest and the history title: a rewrite that drops either says less
    assert validate("You may like this because it is about sports.", GROUNDED) is None
    assert validate("You read about the Riverton Hawks and Lakeport Mariners before.", GROUNDED) is None
    two = Grounding(interests=("sports", "nfl"))
    assert validate("You may like this because you follow sports.", two) is None
    assert validate("You may like this because you follow sports and the NFL.", two)


def test_a_grounding_is_read_back_from_the_record_facts():
    again = Grounding.from_facts(GROUNDED.facts)
    assert again.facts == GROUNDED.facts and again.history.title == HAWKS.title
    assert Grounding.from_facts(("interest: tech",)).facts == ("interest: tech",)
    assert Grounding.from_facts(()).facts == ()


def test_choose_falls_back_to_the_template():
    chosen = choose(["You may like this because it is about sports.", "gibberish", None],
                    [Grounding(interests=("sports",)), GROUNDED, Grounding()], [CANDIDATE] * 3)  # fmt: skip
    assert chosen[0] == ("You may like this because it is about sports.", "llm")
    assert chosen[1] == (template_explanation(GROUNDED, CANDIDATE), "template")
    assert chosen[1][0] == (
        "Recommended because it is about sports, which you follow, and it is close to "
        '"Riverton Hawks beat Lakeport Mariners in overtime", which you read.'
    )
    assert chosen[2][0] == "Recommended because it is new in sports and adds variety to your feed."


def test_when_the_model_leads_the_explanation_names_what_its_judgement_rests_on():
    """An item whose score the LLM's relevance leads is explained by the titles the LLM read: the closest of them
    is named whatever its similarity; the same item led by similarity is not."""
    from core.records import Signals
    from feed.explain import groundings, model_leads

    older = HistoryItem("s9", "A recipe for lentil soup", "food", np.array([0.0, 1.0]))
    profile = Profile("u", history=(HAWKS, older), explicit=("tennis",))
    pasta = article("d", "Pasta night in the city", "food")
    by_model = Signals(relevance=0.9, similarity=0.1)
    by_similarity = Signals(relevance=0.1, similarity=0.9)
    weights = {"relevance": 0.5, "similarity": 0.3}
    assert model_leads(by_model, weights) and not model_leads(by_similarity, weights)
    assert not model_leads(Signals(), weights)  # nothing scored: nothing leads
    # the LLM's P(Yes) and its match (llm/tower.py) lead together, though neither alone would
    both = {"relevance": 0.3, "match": 0.3, "similarity": 0.5}
    assert model_leads(Signals(relevance=0.5, match=0.5, similarity=0.5), both)
    assert not model_leads(Signals(relevance=0.5, match=0.0, similarity=0.5), both)
    hit = type("Hit", (), {"article": pasta, "embedding": np.array([0.2, 0.98])})()
    [judged, plain] = groundings(profile, [hit, hit], [by_model, by_similarity], weights, model_read=1)
    # the LLM read one title (the latest): it is named, though far from pasta; similarity alone names nothing
    assert judged.judged and judged.history is HAWKS and "judged: relevance" in judged.facts
    assert plain.history is older and not plain.judged  # the closest of all history, above the threshold
    text = template_explanation(judged, pasta)
    assert "our model judged it" in text and HAWKS.title in text
    assert Grounding.from_facts(judged.facts) == Grounding(history=HistoryItem("", HAWKS.title, "", np.zeros(0)),
                                                           judged=True)  # fmt: skip
