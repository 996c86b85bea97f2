"""Fuzzing the sidebar's REST API, authenticated, on every route: bodies (JSON of any shape,
broken JSON, bytes that are not UTF-8), path ids (any text, quoted into one segment) and the
query. Never a 500, every error a JSON ``{"error", "type"}`` object on one line.

Ray-free: the unit tier turns any Ray start into a failure, so a route that tried to start or
reach a cluster on a fuzzed input would show here as a 500. ``LEPTON_FUZZ_EXAMPLES`` sets the
examples per route (bench/reliability.py runs more); the count sent is appended to
``LEPTON_RELIABILITY_LOG`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 - jp_fetch & co. for this module only

from lepton_lab.server._handlers import ROUTES
from tests._reliability import record
from tests._server_api import run

EXAMPLES = int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["address", "name", "limit", "status", "force"]),
                    json_values, max_size=3).map(json.dumps),
    st.binary(max_size=200),                                    # not JSON, maybe not UTF-8
    st.sampled_from(["", "{", "[1", "null", "{\"address\": 1e999}", "\xff\xfe", "{}" * 1000]),
)
ids = st.one_of(st.text(min_size=1, max_size=60),
                st.sampled_from(["..", ".", "%00", "a/b", "' OR 1=1 --", "*", "%", "_",
                                 "x" * 2000, "\x00", "nope:1", "nope:-1", ":"]))
queries = st.dictionaries(st.sampled_from(["limit", "status", "x"]),
                          st.one_of(st.text(max_size=20),
                                    st.integers(-10**20, 10**20).map(str)), max_size=3)


@pytest.fixture
def jp_server_config(lepton_home):
    # authentication stays on: the server gets a random token (jp_fetch sends it)
    return {"ServerApp": {"jpserver_extensions": {"lepton_lab": True}}}


def _methods(handler) -> list[str]:
    base = handler.__mro__[-2]
    return [m for m in ("GET", "POST") if getattr(handler, m.lower()) is not
            getattr(base, m.lower(), None)]


def _path(route: str, ident: str) -> str:
    return route.replace("([^/]+)", urllib.parse.quote(ident, safe=""))


def _check(resp, what: str) -> None:
    assert resp.code != 500 and resp.code < 600, f"{what} answered {resp.code}: {resp.body[:300]}"
    data = json.loads(resp.body)                                # always JSON
    if resp.code >= 400:
        assert isinstance(data, dict) and isinstance(data.get("error"), str), (what, data)
        assert "\n" not in data["error"] and data.get("type"), (what, data)


def _send(loop, jp_fetch, path: str, method: str, body, params):
    parts = path.split("/")
    return run(loop, lambda: jp_fetch("lepton", "api", *parts, method=method,
                                      body=body if method == "POST" else None,
                                      params=params or None, raise_error=False))


def test_every_route_survives_fuzzed_requests(jp_fetch, jp_asyncio_loop, monkeypatch):
    from lepton_lab.config import get_config

    # a body without an address means "the configured cluster, else start the embedded one";
    # here the configured one is a host that does not resolve, so nothing may start
    monkeypatch.setattr(get_config(), "address", "nowhere.invalid:6379")
    sent = {"n": 0}

    def fuzz(route: str, method: str):
        @FUZZ
        @given(ident=ids, body=bodies, params=queries)
        def one(ident, body, params):
            if route == "cluster/connect":     # "local" asks for the embedded cluster: no fuzz
                assume(not re.search(rb'"address": "\s*(local|embedded)\s*"',
                                     body if isinstance(body, bytes) else body.encode()))
            path = _path(route, ident)
            resp = _send(jp_asyncio_loop, jp_fetch, path, method, body, params)
            sent["n"] += 1
            if resp.code == 404 and not resp.body.startswith(b"{"):
                # a quoted id that tornado decodes into several segments matches no route
                # at all: Jupyter's own 404 page, not one of ours
                assert "([^/]+)" in route
                return
            _check(resp, f"{method} {path} body={body!r:.80} params={params}")

        return one

    for route, handler in ROUTES:
        for method in _methods(handler):
            fuzz(route, method)()
    record("rest_fuzz", tried=sent["n"], survived=sent["n"])
    assert sent["n"] >= EXAMPLES * len(ROUTES)
