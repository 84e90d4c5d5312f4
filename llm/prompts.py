"""Prompt templates: versioned Jinja files in the `prompts` package, rendered with StrictUndefined.

Each template's variables are pinned below and checked when it loads, so a template edit that adds or
drops a variable fails at once, not as a silently blank prompt. A new prompt wording is a new file
(relevance.v2.jinja), never an edit of a version that rankings were already recorded under.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import jinja2
from jinja2 import meta

from core.errors import InvalidInput
from llm.untrusted import neutralize

TEMPLATE_VARIABLES: dict[str, frozenset[str]] = {
    "system.v1": frozenset(),
    "profile.v1": frozenset({"cold_start", "interests", "explicit", "mutes", "history"}),
    "candidate.v1": frozenset({"title", "category", "subcategory", "abstract"}),
    "candidate.v2": frozenset({"title", "category", "subcategory", "abstract"}),  # quoted, neutralized article text
    "relevance.v1": frozenset({"profile", "candidate"}),
    # the question in the shared prefix; a candidate's own text and the answer cue after it (candidate.v3)
    "relevance.v2": frozenset({"profile"}),
    "candidate.v3": frozenset({"text", "limit", "category"}),
    "explain.v1": frozenset({"title", "reason"}),
    "explain_answer.v1": frozenset(),  # the start of the answer, so the model continues a sentence to "you"
    "listwise.v1": frozenset({"profile", "candidates"}),
    "chat.v1": frozenset({"title", "category", "position", "reasons", "grounded_in"}),
    "why.v2": frozenset(
        {
            "item",
            "total",
            "user_id",
            "created",
            "strategy",
            "backend",
            "model",
            "adapter",
            "prompt_version",
            "cold_start",
            "signals",
            "weights",
        }
    ),
}
# the audit of one recommendation, with where its relevance came from
TEMPLATE_VARIABLES["why.v3"] = TEMPLATE_VARIABLES["why.v2"] | {"relevance"}


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("prompts"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,  # plain text for a model, not HTML
    )
    env.filters["untrusted"] = neutralize  # text from article feeds: `{{ title | untrusted }}`, `untrusted(300)`
    return env


def declared_variables(name: str) -> frozenset[str]:
    env = _environment()
    source = env.loader.get_source(env, f"{name}.jinja")[0]  # type: ignore[union-attr]
    return frozenset(meta.find_undeclared_variables(env.parse(source)))


@cache
def template(name: str) -> jinja2.Template:
    if name not in TEMPLATE_VARIABLES:
        raise InvalidInput(f"unknown prompt template {name!r}")
    found = declared_variables(name)
    if found != TEMPLATE_VARIABLES[name]:
        raise InvalidInput(f"prompt {name} uses {sorted(found)} but is pinned to {sorted(TEMPLATE_VARIABLES[name])}")
    return _environment().get_template(f"{name}.jinja")


def render(name: str, **variables: object) -> str:
    expected = TEMPLATE_VARIABLES.get(name, frozenset())
    if set(variables) != expected:
        raise InvalidInput(f"prompt {name} takes {sorted(expected)}, got {sorted(variables)}")
    return template(name).render(**variables).strip()
