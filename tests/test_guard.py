"""The one check on model text before a reader sees it (llm/guard.py), and its two users: explanations and chat."""

from chat.conversation import judge
from feed.explain import Grounding, validate
from llm import guard


def test_sentences_keep_complete_ones_and_drop_a_cut_one():
    assert guard.sentences("You like sports.  You read a lot!  And then the", 2) == "You like sports. You read a lot!"
    assert guard.sentences("You like sports. Is it? Yes.", 3, ends=".!") == "You like sports. Yes."
    assert guard.sentences("cut off before the end", 1) == ""


def test_check_says_what_makes_text_unfit():
    fine = "You may like this because you follow sports."
    assert guard.check(fine, 1, 280) == (fine, None)
    assert guard.check("You.", 1, 280)[1].startswith("not one complete sentence")
    assert guard.check("You may like it. " * 30, 2, 20)[1].startswith("not 1 to 2 complete sentences")
    assert guard.check("You may like this, see https://x.example now.", 1, 280)[1].startswith("not one")
    assert guard.check("You may like this as a language model says.", 1, 280)[1].startswith("not one")
    assert guard.check("assistant: You may like this because of sports.", 1, 280)[1] == "chat-template debris"
    assert guard.check("You may like this, I think, because of sports.", 1, 280)[1] == "meta-talk or a question"
    assert guard.check("This article is about sports and the league.", 1, 280)[1] == "not said to the reader"


def test_content_words_leave_out_short_words_and_stopwords():
    assert guard.content_words("The Hawks win the title, and it's over!") == {"hawks", "win", "title", "it's"}


def test_explanations_and_chat_answers_share_the_check():
    grounded = Grounding(interests=("sports",))
    said = "You may like this, I think, because you follow sports."  # meta-talk: neither may show it
    assert validate(said, grounded) is None
    assert judge(said, ["sports"], "affinity")[1] == "meta-talk or a question"
    shown = "You may like this because you follow sports."
    assert validate(shown, grounded) == shown
    assert judge(shown, ["sports"], "affinity") == (shown, None)
