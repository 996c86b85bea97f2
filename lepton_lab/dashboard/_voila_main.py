"""``python -m lepton_lab.dashboard._voila_main VOILA_ARGS...``: Voila with a required token.

The token comes from ``$LEPTON_DASHBOARD_TOKEN`` and is removed from the environment before
Voila starts, so the page kernels (which inherit the environment) never see it; it is given
to Voila in-process rather than on the command line, where other users' ``ps`` would show it.

A page visited with ``?token=`` is answered with a redirect to the same URL without it, once
the token has logged the browser in (the login cookie comes with the redirect). So the token
leaves the address bar and the browser history, and never reaches a page kernel: Voila hands
each kernel the request's query string in ``QUERY_STRING``.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import parse_qsl, urlencode

from ._launch import TOKEN_ENV


def without_token(path: str, query: str) -> str:
    """``path?query`` with every ``token=`` parameter dropped (the rest kept, in order)."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return path + ("?" + urlencode(kept) if kept else "")


def _token_free(handler_cls):
    """``handler_cls`` whose authenticated GETs that carry ``?token=`` redirect without it."""
    import tornado.web

    class TokenFree(handler_cls):
        @tornado.web.authenticated
        async def get(self, *args, **kwargs):
            if "token" in self.request.query_arguments:
                self.redirect(without_token(self.request.path, self.request.query))
                return None
            return await super().get(*args, **kwargs)

    TokenFree.__name__ = TokenFree.__qualname__ = f"TokenFree{handler_cls.__name__}"
    return TokenFree


def _voila_app():
    """Voila whose page and directory handlers drop the token from the URL."""
    from voila.app import Voila  # imported here: the rest of the package stays tornado-free
    from voila.tornado.handler import TornadoVoilaHandler
    from voila.tornado.treehandler import TornadoVoilaTreeHandler

    swap = {cls: _token_free(cls) for cls in (TornadoVoilaHandler, TornadoVoilaTreeHandler)}

    class LeptonVoila(Voila):
        def init_handlers(self):
            return [(h[0], swap.get(h[1], h[1]), *h[2:]) if isinstance(h, tuple) else h
                    for h in super().init_handlers()]

    return LeptonVoila


def main(argv: list[str] | None = None) -> int:
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        print(f"lepton dashboard: {TOKEN_ENV} is not set; refusing to serve without a token",
              file=sys.stderr)
        return 2
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith(("--token", "--Voila.token", "--Voila.auto_token")) for a in args):
        print("lepton dashboard: the token is set through the environment only",
              file=sys.stderr)
        return 2
    _voila_app().launch_instance(argv=[*args, f"--Voila.token={token}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
