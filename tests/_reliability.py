"""Figures for docs/reliability.md: tests that measure a fault append one JSON line to the
file named by ``LEPTON_RELIABILITY_LOG`` (bench/reliability.py sets it); without it, nothing."""

from __future__ import annotations

import json
import os
import time


def record(check: str, **figures) -> None:
    """Append ``{"check": check, **figures}`` to the reliability log, if one is set."""
    path = os.environ.get("LEPTON_RELIABILITY_LOG")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"check": check, "ts": time.time(), **figures}) + "\n")
