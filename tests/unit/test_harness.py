"""The unit tier's own guard rails work (so a test that reaches Ray cannot pass by accident)."""

from __future__ import annotations

import os
import sys

import pytest

from lepton_lab import cluster
from lepton_lab.config import get_config

from .conftest import OnImport, RayForbidden


def test_lepton_home_is_private_to_the_test(lepton_home):
    assert os.environ["LEPTON_HOME"] == str(lepton_home)
    assert get_config().home_path == lepton_home
    assert "RAY_ADDRESS" not in os.environ


def test_embedded_start_is_forbidden():
    # connect() without any address goes to the embedded cluster: that must blow up here
    with pytest.raises(RayForbidden):
        cluster.connect()


def test_import_guard_runs_after_first_import(monkeypatch):
    # the same mechanism that patches ray.init when Ray is imported later, on a cheap module
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    seen = []
    guard = OnImport("colorsys", seen.append)
    sys.meta_path.insert(0, guard)
    try:
        import colorsys
    finally:
        sys.meta_path.remove(guard)
    assert seen == [colorsys]
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
