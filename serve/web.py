"""The pages for people. The reader's: pick a reader, see the explained feed, click, rate or comment, ask why,
watch it change. The operator's dashboard: the five metrics over time per experiment arm, what is served, the
queue and latency, the most shown and clicked articles.

The pages themselves are public; they call the JSON API with the key the person gives it (kept in the browser's
local storage, or taken from the URL fragment that `newsrank serve` prints, which never reaches the server).
"""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from serve.auth import PUBLIC


@get("/", sync_to_thread=False, opt={PUBLIC: True}, include_in_schema=False)
def index() -> Template:
    return Template(template_name="index.html.jinja", context={})


@get("/dashboard", sync_to_thread=False, opt={PUBLIC: True}, include_in_schema=False)
def dashboard() -> Template:
    """The operator's view; its data needs an admin key."""
    return Template(template_name="dashboard.html.jinja", context={})


ROUTES = [index, dashboard]
