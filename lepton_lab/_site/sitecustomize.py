"""On the PYTHONPATH of the embedded cluster's processes (``lepton_lab/_embedded.py``): every
Ray worker and agent defers the slow import that ``import ray`` would pay
(``lepton_lab/_lazyimport.py``), then runs the ``sitecustomize`` this one shadows, if any."""

import importlib
import os
import sys


def _defer() -> None:
    try:
        from lepton_lab._lazyimport import defer_slow_imports

        defer_slow_imports()
    except Exception:  # noqa: BLE001 - never stop a Ray process from starting
        pass


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        try:
            importlib.import_module("sitecustomize")
        except ImportError as exc:
            if exc.name != "sitecustomize":
                raise
            if ours is not None:
                sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


_defer()
_chain()
