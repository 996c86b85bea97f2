"""Bearer tokens of endpoints.

A token is ``lep_`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``, 256 random bits).
It is shown once, when the endpoint is deployed; the store and the replicas keep only its
SHA-256, and a request's token is checked with :func:`hmac.compare_digest` against it. The
token itself never goes into the store, a log, a repr or an exception: :func:`hint` gives
the few characters that are safe to show (``lep_AbCd…``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "lep_"
HINT_CHARS = 4  # random characters shown after the prefix in hints


def generate_token() -> str:
    """A fresh endpoint token."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token (what the store and the replicas keep)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hint(token: str | None) -> str:
    """The shown part of a token: its prefix and first few characters, then an ellipsis."""
    if not token:
        return ""
    shown = len(PREFIX) + HINT_CHARS if token.startswith(PREFIX) else HINT_CHARS
    return token[:shown] + "…"


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def verify(token: str | None, token_hash: str | None) -> bool:
    """Whether ``token`` hashes to ``token_hash`` (constant-time comparison).

    No hash means the endpoint was deployed without authentication: everything passes.
    """
    if not token_hash:
        return True
    if not token:
        return False
    return hmac.compare_digest(hash_token(token), token_hash)


def check_auth(authorization: str | None, token_hash: str | None) -> str | None:
    """None if the request may pass, else the reason it may not (for a 401 body)."""
    if not token_hash:
        return None
    token = bearer(authorization)
    if token is None:
        if authorization:
            return "the Authorization header must be 'Bearer <token>'"
        return "missing bearer token: send 'Authorization: Bearer <token>'"
    if not verify(token, token_hash):
        return "invalid token"
    return None
