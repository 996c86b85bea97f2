"""Lepton Lab: send notebook cells to a Ray cluster with GPUs.

In a notebook::

    %load_ext lepton_lab

    %%lepton --gpus 1
    import torch
    x = torch.randn(1024, 1024, device="cuda") @ w

From Python, the same core::

    import lepton_lab
    lepton_lab.run_cell("y = x * 2", namespace, lepton_lab.CellSpec(cpus=1), lepton_lab.TextSink())
"""

from ._lazyimport import defer_slow_imports
from ._version import __version__

defer_slow_imports()    # before anything here imports Ray: saves it seconds (see _lazyimport)

__all__ = [
    "CellSpec", "LeptonError", "TextSink", "__version__", "connect", "display", "progress",
    "record", "run_cell", "status",
]


def __getattr__(name: str):
    # Lazy: importing lepton_lab on a Ray worker or in `lepton --help` stays cheap.
    if name in ("CellSpec", "TextSink", "run_cell", "progress"):
        from . import remote

        return getattr(remote, name)
    if name == "record":
        from .pipeline._record import record

        return record
    if name == "display":
        from .remote._executor import display

        return display
    if name in ("connect", "status"):
        from . import cluster
        from .remote import _status

        return cluster.connect if name == "connect" else _status.cluster_status
    if name == "LeptonError":
        from .errors import LeptonError

        return LeptonError
    raise AttributeError(f"module 'lepton_lab' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """``%load_ext lepton_lab``: register the ``%lepton`` / ``%%lepton`` magics."""
    from .notebook import register

    register(ipython)


def unload_ipython_extension(ipython) -> None:
    from .notebook import unregister

    unregister(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab sidebar (built from ../labextension into lepton_lab/labextension)."""
    return [{"src": "labextension", "dest": "lepton-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The REST API the sidebar calls (``lepton_lab.server``)."""
    from .server import _jupyter_server_extension_points as points

    return points()
