"""Fixtures shared by every test tier (unit and integration keep their own conftest too)."""

from __future__ import annotations

import pytest


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
