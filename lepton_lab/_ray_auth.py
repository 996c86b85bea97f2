"""Ray token authentication: the embedded cluster's own token, and switching this driver
between the embedded cluster's auth settings and the user's own.

A ground module: it imports nothing from lepton_lab but :mod:`lepton_lab.config`, and Ray
only inside :func:`_apply_auth_env`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .config import get_config

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# the user's own Ray auth settings while the embedded cluster's are applied in this process
_user_auth: dict[str, str | None] | None = None


def _embedded_token_path() -> Path:
    """The embedded cluster's token: one per LEPTON_HOME, readable by its owner only.

    `ray start` refuses to create a token itself, and ~/.ray/auth_token belongs to the user's
    other clusters, so the embedded cluster keeps its own beside its state.
    """
    path = get_config().home_path / "ray_auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _embedded_auth_env() -> dict[str, str | None]:
    """Ray token authentication for the embedded cluster; None means: unset the variable."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_embedded_token_path()),
            "RAY_AUTH_TOKEN": None}


def _with_env(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(base)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# -- this driver's settings ------------------------------------------------------------------
def _use_embedded_auth() -> None:
    global _user_auth
    if _user_auth is None:
        _user_auth = {k: os.environ.get(k) for k in _AUTH_VARS}
    _apply_auth_env(_embedded_auth_env())


def _use_user_auth() -> None:
    """The user's settings for their own cluster, re-applied even when unchanged in case Ray
    was imported before they were set."""
    global _user_auth
    env, _user_auth = _user_auth, None
    _apply_auth_env(env if env is not None else {}, force=True)


def _apply_auth_env(env: dict[str, str | None], force: bool = False) -> None:
    """Switch this driver to a cluster's auth settings even if Ray was imported earlier.

    Ray caches RAY_AUTH_MODE and the token in C++ when first imported; it refreshes those caches
    the same way when it enables token auth itself, so do that too (best effort on other versions).
    """
    if not force and all(os.environ.get(k) == v for k, v in env.items()):
        return
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    with contextlib.suppress(Exception):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
