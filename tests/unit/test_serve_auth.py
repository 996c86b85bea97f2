"""Endpoint tokens: generation, hashing, verification, and never showing the secret."""

from __future__ import annotations

import hashlib
import re

import pytest

from lepton_lab.serve import _auth
from lepton_lab.serve._app import HttpError, authorize


def test_tokens_are_prefixed_random_and_url_safe():
    tokens = {_auth.generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for tok in tokens:
        assert re.fullmatch(r"lep_[A-Za-z0-9_-]{43}", tok), tok


def test_hash_is_sha256_hex_and_verify_accepts_only_the_token():
    tok = _auth.generate_token()
    h = _auth.hash_token(tok)
    assert h == hashlib.sha256(tok.encode()).hexdigest()
    assert _auth.verify(tok, h)
    assert not _auth.verify(tok + "x", h)
    assert not _auth.verify(tok[:-1], h)
    assert not _auth.verify(_auth.generate_token(), h)
    assert not _auth.verify(None, h)
    assert not _auth.verify("", h)
    assert _auth.verify(None, None)          # deployed with auth=False


def test_hint_shows_the_prefix_and_four_characters_only():
    tok = _auth.generate_token()
    hint = _auth.hint(tok)
    assert hint == tok[:8] + "…"
    assert tok[8:] not in hint
    assert _auth.hint(None) == "" and _auth.hint("") == ""


@pytest.mark.parametrize("header,expected", [
    ("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("BEARER abc", "abc"),
    ("Basic abc", None), ("Bearer", None), ("Bearer ", None), ("", None), (None, None),
    ("abc", None),
])
def test_bearer_header_parsing(header, expected):
    assert _auth.bearer(header) == expected


def test_authorize_gives_401_with_a_challenge_and_no_secret():
    tok = _auth.generate_token()
    h = _auth.hash_token(tok)
    authorize(f"Bearer {tok}", h)           # passes
    authorize(None, None)                   # no auth configured
    for header, needle in [(None, "missing bearer token"), ("Basic xyz", "must be 'Bearer"),
                           (f"Bearer {tok}x", "invalid token")]:
        with pytest.raises(HttpError) as info:
            authorize(header, h)
        err = info.value
        assert err.status == 401 and needle in err.message
        assert err.headers["WWW-Authenticate"].startswith("Bearer")
        assert tok not in err.message and h not in err.message
    with pytest.raises(HttpError) as info:
        authorize(f"Bearer {tok}x", h)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
