from importlib.resources import files

import jinja2
import pytest

from core.errors import InvalidInput
from llm import prompts


def test_every_template_file_is_pinned_and_matches_its_variables():
    names = {p.name.removesuffix(".jinja") for p in files("prompts").iterdir() if p.name.endswith(".jinja")}
    assert names == set(prompts.TEMPLATE_VARIABLES)
    for name, expected in prompts.TEMPLATE_VARIABLES.items():
        assert prompts.declared_variables(name) == expected, name
        prompts.template(name)  # loads and checks


def test_relevance_prompt_pins_its_variables():
    assert prompts.TEMPLATE_VARIABLES["relevance.v1"] == {"profile", "candidate"}
    text = prompts.render("relevance.v1", profile="Interests: sports.", candidate="Hawks win (sports)")
    assert text.startswith("Reader profile:\nInterests: sports.")
    assert text.endswith("Answer Yes or No.\nArticle:\nHawks win (sports)")


def test_render_rejects_missing_or_extra_variables():
    with pytest.raises(InvalidInput):
        prompts.render("relevance.v1", profile="x")
    with pytest.raises(InvalidInput):
        prompts.render("relevance.v1", profile="x", candidate="y", extra="z")
    with pytest.raises(InvalidInput):
        prompts.template("nope.v9")


def test_strict_undefined_catches_a_missing_attribute():
    with pytest.raises(jinja2.UndefinedError):
        prompts.template("why.v3").render(**{v: None for v in prompts.TEMPLATE_VARIABLES["why.v3"]} | {"item": {}})


def test_profile_text_for_cold_and_warm_readers():
    cold = prompts.render("profile.v1", cold_start=True, interests=[], explicit=[], mutes=[], history=[])
    assert cold == "A new reader with no reading history yet."
    warm = prompts.render(
        "profile.v1", cold_start=False, interests=["sports"], explicit=["football"], mutes=["food"], history=["A", "B"]
    )
    assert warm.splitlines() == [
        "Interests: sports.",
        "Asked for more: football.",
        "Does not want: food.",
        "Recently read:",
        "- A",
        "- B",
    ]


def test_profile_text_has_no_blank_lines_when_sections_are_missing():
    text = prompts.render("profile.v1", cold_start=False, interests=["sports"], explicit=[], mutes=[], history=["A"])
    assert text == "Interests: sports.\nRecently read:\n- A"
