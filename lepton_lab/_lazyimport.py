"""Defer an import that costs every Python process that imports Ray more than a second.

``import ray`` imports ``jsonschema``, whose format checkers import ``rfc3987_syntax`` when it is
installed, and it is wherever JupyterLab is (jupyter-events asks for
``jsonschema[format-nongpl]``). That module builds an Earley parser for RFC 3987 when it is
imported: 1.5 s of the 2.5 s that ``import ray`` took on the 2-core machine of
docs/benchmarks.md, paid by the kernel, by ``lepton``, and by every Ray worker and agent.

:func:`defer_slow_imports` puts a stand-in module in ``sys.modules`` instead: its functions
import the real module on their first call, and any other attribute imports it at once. Code
that uses the module sees no difference except when the cost is paid (jsonschema's ``iri``
formats are still checked, by the real parser). Called when ``lepton_lab`` is imported, and in
the embedded cluster's processes by ``lepton_lab/_site/sitecustomize.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any, Callable

DEFERRED = ("rfc3987_syntax",)
_FUNCTIONS = {"rfc3987_syntax": ("is_valid_syntax", "parse")}


class _Deferred(types.ModuleType):
    """Stands in for a module until something needs it."""

    def __init__(self, name: str):
        super().__init__(name, "deferred by lepton_lab: imported on first use")
        self.__lepton_deferred__ = True

    def _load(self) -> types.ModuleType:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return importlib.import_module(name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr in _FUNCTIONS.get(self.__name__, ()):
            fn = _first_call_loads(self, attr)
            setattr(self, attr, fn)
            return fn
        return getattr(self._load(), attr)


def _first_call_loads(stand_in: _Deferred, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(stand_in._load(), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    call.__doc__ = f"{stand_in.__name__}.{attr}, imported on its first call"
    return call


def defer_slow_imports() -> None:
    """Put stand-ins for :data:`DEFERRED` modules that are installed but not imported yet."""
    for name in DEFERRED:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            stand_in = _Deferred(name)
            stand_in.__spec__ = spec    # find_spec() on it still answers (it is installed)
            sys.modules[name] = stand_in
