"""API keys with two scopes.

- admin: everything (articles, adapters, training, metrics, any user);
- client: feed, events and chat for the users it may act for (exact ids or shell-style patterns: "demo-*").

Keys come from NEWSRANK_API_KEYS (JSON) or the key file (DATA_DIR/api_keys.json by default). When neither
holds a key, the first start writes an admin key into the key file (mode 0600) and logs where it is.
Presented keys are compared with every known key in constant time, so timing reveals nothing about them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from config.settings import Settings
from core.errors import InvalidInput, NewsrankError

log = logging.getLogger("newsrank.serve")

Scope = Literal["admin", "client"]
PUBLIC = "exclude_from_auth"  # route opt key: no key needed (health probes, the web page shell)


class NotAuthenticated(NewsrankError):
    """No API key, or one newsrank does not know (HTTP 401)."""


class PermissionDenied(NewsrankError):
    """A known key asked for something outside its scope (HTTP 403)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    scope: Scope = "client"
    users: tuple[str, ...] = ()  # client keys: the user ids (or patterns) it may act for

    def __post_init__(self) -> None:
        if self.scope not in ("admin", "client"):
            raise InvalidInput(f"API key {self.name!r}: scope must be admin or client, not {self.scope!r}")
        if len(self.key) < 16:
            raise InvalidInput(f"API key {self.name!r} is too short: use at least 16 random characters")

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    @property
    def id(self) -> str:
        """A short digest of the secret: what the service records a client by (its queue share, its feeds, its
        idempotency keys). Unique, unlike names, and no use to anyone who reads it."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    def may_act_for(self, user_id: str) -> bool:
        return self.admin or any(fnmatch.fnmatchcase(user_id, pattern) for pattern in self.users)

    def check_user(self, user_id: str) -> None:
        if not self.may_act_for(user_id):
            raise PermissionDenied(f"key {self.name!r} may not act for user {user_id!r}")


def parse_keys(rows: Any, source: str) -> list[ApiKey]:
    if not isinstance(rows, list):
        raise InvalidInput(f"{source}: expected a JSON list of keys")
    try:
        return [ApiKey(r["name"], r["key"], r.get("scope", "client"), tuple(r.get("users", ()))) for r in rows]
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"{source}: each key needs a name and a key ({exc})") from None


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        if len({k.key for k in keys}) != len(keys):
            raise InvalidInput("two API keys have the same secret")
        if len({k.name for k in keys}) != len(keys):
            raise InvalidInput("two API keys have the same name: names are how logs and errors tell them apart")
        self.keys = tuple(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        if settings.api_keys:
            return cls(parse_keys(json.loads(settings.api_keys), "NEWSRANK_API_KEYS"))
        path = settings.api_keys_path
        if not path.is_file():
            write_key_file(path, [ApiKey("admin", secrets.token_urlsafe(32), "admin")])
            log.warning("created an admin API key in %s (send it as 'Authorization: Bearer KEY')", path)
        try:
            return cls(parse_keys(json.loads(path.read_text()), str(path)))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: not JSON ({exc})") from None

    def find(self, presented: str) -> ApiKey | None:
        found = None
        for key in self.keys:  # no early exit: every key is compared
            if hmac.compare_digest(key.key.encode(), presented.encode()):
                found = key
        return found


def write_key_file(path: Path, keys: Sequence[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"name": k.name, "key": k.key, "scope": k.scope, "users": list(k.users)} for k in keys]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(rows, f, indent=2)


def presented_key(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return connection.headers.get("x-api-key") or None


class ApiKeyMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: Any, keys: KeyRing, requests: Any = None, **kwargs: Any) -> None:
        # every method needs a key, OPTIONS too: the guards behind it read the key (no cross-origin use here)
        super().__init__(app, exclude_from_auth_key=PUBLIC, exclude_http_methods=[], **kwargs)
        self.keyring = keys
        self.requests = requests  # a serve.limits.RateLimiter: each key's requests a minute

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        presented = presented_key(connection)
        if presented is None:
            raise NotAuthenticated("missing API key: send 'Authorization: Bearer KEY'")
        key = self.keyring.find(presented)
        if key is None:
            raise NotAuthenticated("unknown API key")
        if self.requests is not None:
            self.requests.take({key.id: 1}, f"requests of key {key.name!r}")
        return AuthenticationResult(user=key, auth=key.name)


def admin_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for admin routes."""
    if not connection.user.admin:
        raise PermissionDenied(f"key {connection.user.name!r} has scope client; this needs an admin key")
