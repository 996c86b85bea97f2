"""The REST call the server tests share: a request to the sidebar's API with the test
server's token, answered as (status, JSON)."""

from __future__ import annotations

import asyncio
import json


def call(loop, jp_fetch, path, method="GET", body=None, **kw):
    """(status, JSON) of ``METHOD /lepton/api/PATH`` (``kw`` goes to jp_fetch)."""
    if method == "POST" and body is None:
        body = "{}"
    # tornado's client makes its future on the *current* loop; an earlier asyncio.run() in the
    # session leaves none, while jupyter_core hands the fixtures its cached loop
    asyncio.set_event_loop(loop)
    resp = loop.run_until_complete(jp_fetch("lepton", "api", *path.split("/"), method=method,
                                            body=body, raise_error=False, **kw))
    return resp.code, json.loads(resp.body or b"null")
