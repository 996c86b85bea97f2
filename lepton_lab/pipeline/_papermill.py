"""The ``lepton`` papermill engine, registered by entry point (``papermill.engine``).

Papermill imports this module while it registers its engines, so it must not be imported
before papermill is: use ``papermill.execute_notebook(..., engine_name="lepton")`` or
``papermill --engine lepton``. The work is in :mod:`._engine`.

The kernel a run starts talks to papermill over loopback TCP. Where the kernelspec says it
supports CurveZMQ (ipykernel's ``python3`` does) and pyzmq has it, the channels are encrypted;
otherwise they stay as Jupyter's default (HMAC-signed, not encrypted).
"""

from __future__ import annotations

import os

import zmq
from jupyter_client import AsyncKernelManager
from papermill.engines import NBClientEngine
from traitlets import default

from ._engine import OPTIONS, begin, finish, inject_setup


def _check_parameters(nb, kernel_name: str | None) -> None:
    """``papermill --engine lepton`` used directly: the same one-line refusal of a parameter
    of the wrong type as ``lepton run`` gives, before a kernel starts (the run is recorded
    as failed by ``finish``)."""
    from pathlib import Path

    from ._run import check_parameters

    meta = nb.metadata.get("papermill", {})
    source, params = meta.get("input_path"), dict(meta.get("parameters") or {})
    if params and source and Path(str(source)).is_file():
        check_parameters(Path(str(source)), params, kernel_name)


class LeptonKernelManager(AsyncKernelManager):
    """nbclient's kernel manager with CurveZMQ wherever the kernel can speak it."""

    @default("transport_encryption")
    def _encrypt_when_possible(self) -> str:
        return "auto" if zmq.has("curve") else "disabled"


class LeptonEngine(NBClientEngine):
    """papermill's nbclient engine, recording the run (see the module docstring)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        opts = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
        ctx = begin(nb_man.nb, nb_man.output_path, opts)
        inject_setup(nb_man.nb, ctx)
        kwargs.setdefault("kernel_manager_class", LeptonKernelManager)
        error: BaseException | None = None
        try:
            if not opts.get("lepton_run_id"):    # `lepton run` and sweeps checked already
                _check_parameters(nb_man.nb, kernel_name)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(nb_man.nb, ctx, error)
            os.environ.pop("LEPTON_PIPELINE_RUN", None)
