"""GPU tests: run only where CUDA is present (never in CI); they use the integration cluster."""

import pytest

from tests.integration.conftest import cluster, ip, lepton_home  # noqa: F401 - fixtures


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
