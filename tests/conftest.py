"""Fixtures shared by every test tier (unit and integration keep their own conftest too)."""

from __future__ import annotations

import os
import signal

import pytest

# Kernels and Jupyter servers that the suite starts share the one cluster of the integration
# tests and must not start embedded clusters of their own in the background (each costs ~20 s
# of CPU); tests/integration/test_autostart.py turns it on where it is what is tested.
os.environ["LEPTON_AUTOSTART"] = "0"

# Nor does a kernel of the suite keep a warm cell worker (it holds a CPU for 20 s after a
# cell): tests that ask Ray for every CPU directly would wait for it.
# tests/integration/test_warm_cell.py turns it on; `LEPTON_WARM_CELL_S=20 pytest ...` runs
# the other tests with it on too.
os.environ.setdefault("LEPTON_WARM_CELL_S", "0")

# The interrupt tests press Ctrl-C with _thread.interrupt_main(), which does nothing where
# SIGINT is ignored, as it is for a suite started in the background (`nohup make test &`).
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def lepton_home(tmp_path, monkeypatch):
    """A fresh, empty LEPTON_HOME for one test, with the settings and store re-read from it."""
    from lepton_lab.config import reset_config
    from lepton_lab.store import reset_store

    home = tmp_path / "lepton-home"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    reset_config()
    reset_store()
    yield home
    reset_config()
    reset_store()
