"""``python -m lepton_lab.dashboard._voila_main VOILA_ARGS...``: Voila with a required token.

The token comes from ``$LEPTON_DASHBOARD_TOKEN`` and is removed from the environment before
Voila starts, so the page kernels (which inherit the environment) never see it; it is given
to Voila in-process rather than on the command line, where other users' ``ps`` would show it.
"""

from __future__ import annotations

import os
import sys

from ._launch import TOKEN_ENV


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
    from voila.app import Voila   # imported here: the rest of the package stays tornado-free

    Voila.launch_instance(argv=[*args, f"--Voila.token={token}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
