"""The REST call the server tests share: a request to the sidebar's API with the test
server's token, answered as (status, JSON)."""

from __future__ import annotations

import asyncio
import json


def run(loop, start):
    """``loop.run_until_complete(start())`` with ``loop`` made the current one first: tornado's
    client makes its future on the *current* loop as soon as ``fetch`` is called, an earlier
    asyncio.run() in the session leaves none, and jupyter_core hands the fixtures its own
    cached loop."""
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(start())


def call(loop, jp_fetch, path, method="GET", body=None, **kw):
    """(status, JSON) of ``METHOD /lepton/api/PATH`` (``kw`` goes to jp_fetch)."""
    if method == "POST" and body is None:
        body = "{}"
    resp = run(loop, lambda: jp_fetch("lepton", "api", *path.split("/"), method=method,
                                      body=body, raise_error=False, **kw))
    return resp.code, json.loads(resp.body or b"null")
