"""Runs inside the notebook's kernel, from the cell the pipeline engine injects: it seeds
Python, NumPy and torch from the run's recorded seed before the notebook's own code runs.

NumPy and torch are seeded when they are imported (or at once if they already are), so a
notebook that never imports torch does not pay for importing it. A notebook that seeds on its
own still can: its calls come later and win.
"""

from __future__ import annotations

import importlib.abc
import os
import random
import sys

_SEEDERS = {
    "numpy": lambda mod, seed: mod.random.seed(seed % 2**32),
    "torch": lambda mod, seed: mod.manual_seed(seed),
}


class _SeedOnImport(importlib.abc.MetaPathFinder):
    """Seeds a module right after its first import finishes."""

    def __init__(self, seed: int):
        self.seed = seed
        self.pending = {name for name in _SEEDERS if name not in sys.modules}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") \
                else None
            if spec is not None and spec.loader is not None:
                spec.loader = _SeedingLoader(spec.loader, fullname, self.seed)
                return spec
        return None


class _SeedingLoader(importlib.abc.Loader):
    def __init__(self, inner, name: str, seed: int):
        self.inner, self.name, self.seed = inner, name, seed

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            _SEEDERS[self.name](module, self.seed)
        except Exception:  # noqa: BLE001 - a half-importable package must still import
            pass

    def __getattr__(self, item):            # get_resource_reader and friends
        return getattr(self.inner, item)


def setup(run: str, seed: int) -> None:
    """Called by the injected ``lepton-setup`` cell."""
    os.environ["LEPTON_PIPELINE_RUN"] = run
    os.environ["LEPTON_PIPELINE_SEED"] = str(seed)
    random.seed(seed)
    for name, seeder in _SEEDERS.items():
        if name in sys.modules:
            seeder(sys.modules[name], seed)
    sys.meta_path.insert(0, _SeedOnImport(seed))
