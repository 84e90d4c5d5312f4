"""Keyed pseudonyms: how a reader is named outside the feedback store's own tables.

A pseudonym is an HMAC-SHA256 of the reader id under a secret only the service holds: stable (erasure finds a
reader's rows in training examples by recomputing it), and without the secret neither reversible nor linkable
to the id by anyone who reads an exported file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from core.errors import InvalidInput

PREFIX = "r_"


class Pseudonyms:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise InvalidInput("a pseudonym secret needs at least 16 bytes")
        self._secret = secret

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:24]  # 96 bits: no two readers of any platform collide in practice

    def fingerprint(self) -> str:
        """What tells two secrets apart without telling either: instances that share a store compare it."""
        return hmac.new(self._secret, b"newsrank: the pseudonym secret's fingerprint", hashlib.sha256).hexdigest()

    def split(self, group: str, share: float, seed: int = 0) -> bool:
        """A held-out split by group under the secret: the same group always on the same side, and no client can
        choose which side a reader id it makes up falls on (an unkeyed hash of a chosen id can be aimed)."""
        digest = hmac.new(self._secret, f"{seed}:{group}".encode(), hashlib.sha256).hexdigest()
        return (int(digest, 16) % 10_000) / 10_000 < share


def from_key_file(path: Path) -> Pseudonyms:
    """Pseudonyms under the secret in `path`, generated there (mode 0600) if the file is missing."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(staging, path)  # atomic, and never over a secret another instance wrote first
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    secret = path.read_text().strip()
    if len(secret) < 16:
        raise InvalidInput(f"{path}: the pseudonym secret is too short (at least 16 characters)")
    return Pseudonyms(secret.encode())
