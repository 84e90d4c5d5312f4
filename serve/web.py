"""The page for people: pick a reader, see the explained feed, click or dislike, ask why, watch it change.

The page itself is public; it calls the JSON API with the key the person gives it (kept in the browser's
local storage, or taken from the URL fragment that `newsrank serve` prints, which never reaches the server).
"""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from serve.auth import PUBLIC


@get("/", sync_to_thread=False, opt={PUBLIC: True}, include_in_schema=False)
def index() -> Template:
    return Template(template_name="index.html.jinja", context={})


ROUTES = [index]
