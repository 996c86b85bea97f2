"""Small helpers every table module of the store shares (they import nothing above them)."""

from __future__ import annotations

import getpass
import json
import os
from typing import Any


def current_user() -> str:
    """Who is submitting: the JupyterHub user when there is one, else the OS user."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


def dumps(value: Any) -> str:
    """JSON for config/history/metrics: numpy and torch scalars become numbers, and
    anything else JSON cannot hold becomes its string form rather than failing the write."""
    return json.dumps(value, default=_json_default)


def _json_default(obj: Any) -> Any:
    for convert in ("item", "tolist"):   # numpy/torch scalars and small arrays
        fn = getattr(obj, convert, None)
        if callable(fn):
            try:
                return fn()
            except Exception:
                pass
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return str(obj)
