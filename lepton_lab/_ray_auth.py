"""Ray token authentication: the embedded cluster's own token, and switching this driver
between the embedded cluster's auth settings and the user's own.

The embedded cluster's TLS mode (:mod:`lepton_lab._tls`) is switched the same way: a driver
connected to a TLS embedded cluster gets its certificate files, one connected to a plain one
has RAY_USE_TLS unset, and the user's own values come back for their cluster.

A ground module: it imports nothing from lepton_lab but :mod:`lepton_lab.config` and
:mod:`lepton_lab._tls`, and Ray only inside :func:`_apply_auth_env`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ._tls import TLS_VARS, ensure_local
from .config import get_config

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", *TLS_VARS)
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


def _embedded_auth_env(tls: bool = False) -> dict[str, str | None]:
    """Ray token authentication (and with ``tls`` Ray's TLS mode) for the embedded cluster;
    None means: unset the variable."""
    env: dict[str, str | None] = {"RAY_AUTH_MODE": "token",
                                  "RAY_AUTH_TOKEN_PATH": str(_embedded_token_path()),
                                  "RAY_AUTH_TOKEN": None}
    env.update(ensure_local() if tls else dict.fromkeys(TLS_VARS))
    return env


def _with_env(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(base)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# -- this driver's settings ------------------------------------------------------------------
def _user_env() -> dict[str, str | None]:
    """The user's own values of the variables (those set aside while the embedded cluster's
    are applied, else this process's)."""
    if _user_auth is not None:
        return dict(_user_auth)
    return {k: os.environ.get(k) for k in _AUTH_VARS}


def _use_embedded_auth(tls: bool = False) -> None:
    global _user_auth
    if _user_auth is None:
        _user_auth = _user_env()
    _apply_auth_env(_embedded_auth_env(tls))


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
