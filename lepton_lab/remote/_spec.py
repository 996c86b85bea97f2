"""What a ``%%lepton`` cell asks for, as a frozen dataclass validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import LeptonUsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SECRET = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_size(text: str) -> int:
    """'4GB', '512MiB', '1.5g', '1000' -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise LeptonUsageError(f"--memory {text!r} is not a size; use e.g. 512MiB, 4GB or 2g")
    unit = (m.group(2) or "").lower().rstrip("b")
    try:
        value = int(float(m.group(1)) * _UNITS[unit])
    except (OverflowError, ValueError):
        value = -1
    if value > 2**60:
        raise LeptonUsageError(f"--memory {text[:40]!r} is larger than any machine; use e.g. 64GiB")
    if value <= 0:
        raise LeptonUsageError(f"--memory {text!r} must be more than zero")
    return value


def looks_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def parse_env(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE pairs; names that look secret are refused (they would land in the notebook)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise LeptonUsageError(f"--env {item.split('=')[0]!r} must look like KEY=VALUE")
        if looks_secret(key):
            raise LeptonUsageError(
                f"--env {key} looks like a secret; secrets must not be typed into cells. Set it "
                "in the cluster's environment or in a Ray runtime_env (env_vars) instead")
        out.append((key, value))
    return tuple(out)


@dataclass(frozen=True)
class CellSpec:
    """Resources and behaviour of one remote cell. Built by the magics, the REST API or code."""

    cpus: float | None = None       # per task / per rank; None = 1
    gpus: float = 0.0
    memory: int | None = None       # bytes, a Ray scheduling resource
    workers: int | None = None      # None = one-shot task; N = the warm group of N ranks
    timeout: float | None = None    # seconds
    name: str | None = None
    detach: bool = False
    out: tuple[str, ...] | None = None  # names to pull back (None = every assigned name)
    pull: bool = True
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    all_ranks: bool = False
    cache: bool = False             # reuse the stored result when source and inputs match

    def __post_init__(self) -> None:
        if self.cpus is not None and not (0 <= self.cpus <= 4096):
            raise LeptonUsageError(f"--cpus {self.cpus:g} must be between 0 and 4096")
        if not (0 <= self.gpus <= 1024):
            raise LeptonUsageError(f"--gpus {self.gpus:g} must be between 0 and 1024")
        if self.workers is not None and not (1 <= self.workers <= 1024):
            raise LeptonUsageError(f"--workers {self.workers} must be between 1 and 1024")
        if self.timeout is not None and not (0 < self.timeout <= 7 * 86400):
            raise LeptonUsageError(f"--timeout {self.timeout:g} must be more than 0 seconds and "
                                   "at most 7 days (604800)")
        if self.memory is not None and not (0 < self.memory <= 2**60):
            raise LeptonUsageError("--memory must be more than zero, e.g. 4GiB")
        if self.name is not None and not _NAME.match(self.name):
            raise LeptonUsageError(
                f"--name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if self.cache and self.detach:
            raise LeptonUsageError("--cache keeps the result of a cell that ran in this kernel; "
                                   "a --detach job's result comes with `%lepton attach`. Drop "
                                   "one of the two flags")
        if self.detach and self.workers is not None:
            raise LeptonUsageError(
                "--detach runs a one-shot job that outlives the kernel; it cannot use the warm "
                "group (--workers). Drop one of the two flags")
        for key, _ in self.env:
            if looks_secret(key):
                raise LeptonUsageError(f"--env {key} looks like a secret; use the cluster's "
                                       "environment or a Ray runtime_env instead")
        if self.out is not None:
            for n in self.out:
                if not n.isidentifier():
                    raise LeptonUsageError(f"--out {n!r} is not a Python name")

    @property
    def cpus_per_task(self) -> float:
        return 1.0 if self.cpus is None else self.cpus

    def resources(self) -> dict[str, Any]:
        """Resources for the audit log and the job record (env keys only, never values)."""
        d: dict[str, Any] = {"cpus": self.cpus_per_task, "gpus": self.gpus}
        if self.memory:
            d["memory"] = self.memory
        if self.workers:
            d["workers"] = self.workers
        if self.timeout:
            d["timeout"] = self.timeout
        if self.env:
            d["env_keys"] = [k for k, _ in self.env]
        return d

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts
