"""Unit tier: fast and Ray-free.

Every unit test gets its own LEPTON_HOME, no RAY_ADDRESS, and a Ray that refuses to start or
connect: ``ray.init`` and the embedded-cluster start raise :class:`RayForbidden`. It derives
from BaseException on purpose, so that the ``except Exception`` wrappers in the code under
test (e.g. ``connect`` turning any init failure into ClusterUnavailable) cannot swallow it and
a test that reaches Ray fails loudly instead of passing by accident.

``import ray`` costs several seconds, so it stays lazy: when no test has imported Ray yet,
``ray.init`` is replaced the moment something imports it.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any, Callable

import pytest


class RayForbidden(BaseException):
    """A unit test tried to start or connect to Ray."""


def _forbidden(what: str) -> Callable[..., Any]:
    def forbid(*args: Any, **kwargs: Any) -> Any:
        raise RayForbidden(f"unit tests must not {what}; move this test to tests/integration")

    return forbid


class OnImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` right after the module ``name`` is imported for the first time."""

    def __init__(self, name: str, then: Callable[[Any], None]):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then(module: Any) -> None:
            exec_module(module)
            self.then(module)

        spec.loader.exec_module = exec_then
        return spec


@pytest.fixture(autouse=True)
def _ray_forbidden(lepton_home, monkeypatch):
    import lepton_lab.cluster as cluster

    def forbid_init(ray: Any) -> None:
        monkeypatch.setattr(ray, "init", _forbidden("call ray.init"))

    guard = None
    if "ray" in sys.modules:
        forbid_init(sys.modules["ray"])
    else:
        guard = OnImport("ray", forbid_init)
        sys.meta_path.insert(0, guard)
    monkeypatch.setattr(cluster, "start_embedded", _forbidden("start the embedded Ray cluster"))
    monkeypatch.setattr(cluster, "_CONN", None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield
    finally:
        if guard is not None and guard in sys.meta_path:
            sys.meta_path.remove(guard)


@pytest.fixture(scope="session")
def ip():
    """The test suite's one IPython shell, with the Lepton magics loaded."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "lepton_lab")
    yield shell
    shell.run_line_magic("unload_ext", "lepton_lab")


@pytest.fixture
def replica():
    """An endpoint replica holding a small real torch model (4 -> 8 -> 3), built without Ray
    (its inference, not its HTTP side)."""
    import torch

    from lepton_lab.serve._app import EndpointReplica

    torch.manual_seed(0)
    rep = EndpointReplica.__new__(EndpointReplica)
    rep._session, rep._device, rep._torch = None, "cpu", torch
    rep._model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                     torch.nn.Linear(8, 3)).eval()
    return rep
