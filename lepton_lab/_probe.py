"""Probing a Ray cluster: is an address reachable, and which versions do its nodes run.

A ground module: it imports nothing from lepton_lab but :mod:`lepton_lab.errors`, and Ray
only inside :func:`probe_nodes`. The connection API (:mod:`lepton_lab.cluster`) re-exports
these names and decides what a failed probe means.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .errors import ClusterUnavailable, LeptonUsageError


# -- addresses -------------------------------------------------------------------------------
def _split_host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise LeptonUsageError(
            f"cluster address {address!r} is not host:port or ray://host:port, "
            "e.g. `%lepton connect 10.0.0.5:6379` or `%lepton connect ray://head:10001`"
        )
    return host or "127.0.0.1", int(port)


def _resolves(address: str) -> bool:
    """Whether the address's host name resolves (for the error message of a failed probe)."""
    host, port = _split_host_port(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return True
    except (socket.gaierror, UnicodeError):
        return False


def _answers(address: str, timeout: float = 0.5) -> bool:
    """One TCP connect to the address (no retries): does something listen there right now?"""
    try:
        host, port = _split_host_port(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, UnicodeError, LeptonUsageError):
        return False


def _reachable(address: str, timeout: float) -> bool:
    """TCP probe. A refused connection (nothing listens) gives up after 3 s, since a head that
    is still starting opens its port within that; an unanswered one waits ``timeout``; a host
    name that does not resolve gives up at once (waiting does not make a typo resolve)."""
    host, port = _split_host_port(address)
    start = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(1.0, timeout)):
                return True
        except ConnectionRefusedError:
            if time.monotonic() - start >= min(3.0, timeout):
                return False
        except (socket.gaierror, UnicodeError):
            return False
        except OSError:
            if time.monotonic() - start >= timeout:
                return False
        time.sleep(0.2)


# -- versions --------------------------------------------------------------------------------
_PROBE_SRC = '''
def probe():
    import importlib.metadata as md, platform, shutil, subprocess, sys, os, socket
    def v(name):
        try:
            return md.version(name)
        except Exception:
            return None
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,"
                                  "utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            for line in out.strip().splitlines():
                name, total, used, util = [p.strip() for p in line.split(",")]
                gpus.append({"name": name, "memory_total_mb": float(total),
                             "memory_used_mb": float(used), "utilization": float(util)})
        except Exception:
            pass
    return {"python": platform.python_version(), "cloudpickle": v("cloudpickle"),
            "torch": v("torch"), "lepton_lab": v("lepton-lab"), "ray": v("ray"),
            "hostname": socket.gethostname(), "gpus": gpus}
'''


def _make_probe():
    # Built from source in a throw-away module so cloudpickle ships it by value: the probe
    # must run even where lepton_lab is missing, to say so.
    ns: dict[str, Any] = {"__name__": "_lepton_probe"}
    exec(compile(_PROBE_SRC, "<lepton-probe>", "exec"), ns)
    return ns["probe"]


def local_versions() -> dict[str, str | None]:
    import importlib.metadata as md
    import platform

    def v(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "cloudpickle": v("cloudpickle"),
            "torch": v("torch"), "lepton_lab": v("lepton-lab")}


def compare_versions(local: dict[str, Any], remote: dict[str, Any]) -> list[str]:
    """Human-readable differences that break shipping cells (Python compared by minor version)."""
    diffs = []
    for key in ("python", "cloudpickle", "torch", "lepton_lab"):
        a, b = local.get(key), remote.get(key)
        if key == "python" and a and b:
            same = a.split(".")[:2] == b.split(".")[:2]
        else:
            same = a == b
        if not same:
            diffs.append(f"{key} {a or 'missing'} (kernel) vs {b or 'missing'} (cluster)")
    return diffs


def probe_nodes(timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Run the probe once on every alive node; node id -> versions and GPU facts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_make_probe())
    refs = {}
    for node in ray.nodes():
        if node.get("Alive"):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node["NodeID"]] = probe.options(scheduling_strategy=strategy).remote()
    ready, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    if pending:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise ClusterUnavailable(f"{len(pending)} cluster node(s) did not answer a version probe "
                                 f"within {timeout:.0f} s; check `ray status` on the cluster")
    return {nid: ray.get(ref) for nid, ref in refs.items()}
