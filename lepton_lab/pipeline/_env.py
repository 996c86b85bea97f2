"""What a pipeline run records about where it ran, and the hashes of what it read.

Kept cheap on purpose (no torch or Ray import): it runs before every pipeline run, and the
engine must cost little over plain papermill. GPU facts come from ``nvidia-smi`` when there
is one; the Ray address from the environment or the embedded cluster's state file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the packages a comparison shows first; every installed distribution is recorded too
KEY_PACKAGES = ("lepton-lab", "torch", "numpy", "ray", "papermill", "nbclient", "ipykernel",
                "scikit-learn", "pandas", "cupy-cuda12x", "onnxruntime", "torchao")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 5.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Commit and dirty flag of the repository holding ``directory`` (None outside one)."""
    if shutil.which("git") is None:
        return None
    cwd = str(directory)
    commit = _run(["git", "rev-parse", "HEAD"], cwd)
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": bool(status),
            "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd)}


def gpu_state() -> dict[str, Any]:
    """GPU models, driver and CUDA version from nvidia-smi; empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader"])
    if not out:
        return {}
    gpus = [dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(","))))
            for line in out.splitlines() if line.strip()]
    header = _run(["nvidia-smi"]) or ""
    cuda = None
    if "CUDA Version:" in header:
        cuda = header.split("CUDA Version:")[1].split()[0].strip("|")
    return {"gpus": gpus, "driver": gpus[0]["driver"] if gpus else None, "cuda": cuda}


def packages() -> dict[str, str]:
    """Every installed distribution, name -> version (the full environment)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name:
            found[name] = dist.version
    return dict(sorted(found.items()))


def ray_state() -> dict[str, Any]:
    """The cluster the run's ``%%lepton`` cells go to, without connecting to it."""
    address = os.environ.get("RAY_ADDRESS")
    kind = "address" if address else None
    if not address:
        try:
            from ..cluster import embedded_state

            state = embedded_state()
        except Exception:  # noqa: BLE001 - the record goes on without it
            state = None
        if state:
            address, kind = state.get("address"), "embedded"
    try:
        version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"address": address, "kind": kind or "embedded (started on first use)",
            "version": version}


def capture(notebook_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The environment record of a run whose notebook lives in ``notebook_dir``."""
    pkgs = packages()
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "key_packages": {k: pkgs.get(k) for k in KEY_PACKAGES if k in pkgs},
        "packages": pkgs,
        "git": git_state(notebook_dir),
        "gpu": gpu_state(),
        "ray": ray_state(),
    }


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def hash_inputs(paths: list[str | os.PathLike[str]], base: Path) -> dict[str, str]:
    """``path -> sha256`` for declared input files (relative paths are from ``base``); a
    missing file is a one-line usage error."""
    from ..errors import LeptonUsageError

    hashes = {}
    for raw in paths:
        path = Path(raw)
        full = path if path.is_absolute() else base / path
        if not full.is_file():
            raise LeptonUsageError(f"input file {raw} does not exist (relative paths are read "
                                   f"from {base})")
        hashes[str(raw)] = sha256_file(full)
    return hashes
