"""What the cluster looks like: nodes, CPUs, GPUs, memory, running Lepton jobs, dashboard.

Plain data plus a text rendering; the magics (which add an HTML rendering, in
``lepton_lab.notebook._status``), the CLI, the REST API and the dashboards show the same dict.
"""

from __future__ import annotations

import time
from typing import Any

from ..cluster import (
    background_state,
    current,
    embedded_starting,
    ensure_connected,
    probe_nodes,
)
from ..config import get_config
from ..store import get_store

GiB = 1024**3


def starting_status() -> dict[str, Any] | None:
    """The embedded cluster still starting in the background (in this process or another)
    while this process is not connected: what status shows instead of waiting for it."""
    if current() is not None:
        return None
    bg = background_state()
    if bg and bg["state"] == "starting":
        since = bg["since"]
    else:
        other = embedded_starting()
        if not other:
            return None
        since = other["since"]
    return {"state": "starting", "since": since,
            "log": str(get_config().home_path / "cluster.log")}


def cluster_status(*, probe: bool = True, wait: bool = False) -> dict[str, Any]:
    """Connect if needed and describe the cluster (``probe`` asks each node for GPU facts).

    While the embedded cluster starts in the background, ``{"state": "starting", ...}``
    comes back at once, unless ``wait``."""
    import ray

    if not wait:
        starting = starting_status()
        if starting:
            return starting
    conn = ensure_connected(keep_warm=True)     # a look at the status gives nothing back
    facts = conn.node_versions
    if probe and not facts:
        try:
            facts = conn.node_versions = probe_nodes(timeout=20)
        except Exception:  # noqa: BLE001 - status still shows Ray's own view
            facts = {}
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        fact = facts.get(n["NodeID"], {})
        nodes.append({
            "node_id": n["NodeID"], "address": n.get("NodeManagerAddress"),
            "alive": bool(n.get("Alive")), "head": "node:__internal_head__" in res,
            "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
            "memory": res.get("memory", 0.0), "object_store": res.get("object_store_memory", 0.0),
            "gpu_models": fact.get("gpus", []), "hostname": fact.get("hostname"),
        })
    total = ray.cluster_resources()
    free = ray.available_resources()
    store = get_store()
    running = []
    from ._jobs import refresh

    for job in store.list_jobs(status="running", limit=100):
        if job.kind == "detached":
            job = refresh(job)
        if job.status == "running":
            running.append({"id": job.id, "name": job.name, "kind": job.kind, "user": job.user,
                            "age_s": time.time() - job.created, "resources": job.resources})
    from ._group import group_info
    from ._warm import info as warm_info

    return {
        "address": conn.address, "kind": conn.kind, "dashboard_url": conn.dashboard_url,
        "tls": conn.tls, "nodes": nodes,
        "total": {k: total.get(k, 0.0) for k in ("CPU", "GPU", "memory")},
        "free": {k: free.get(k, 0.0) for k in ("CPU", "GPU", "memory")},
        "running_jobs": running, "group": group_info(timeout=5), "warm_cell": warm_info(),
    }


def gpu_text(node: dict[str, Any]) -> str:
    if node["gpu_models"]:
        return ", ".join(f"{g['name']} {g['memory_total_mb'] / 1024:.0f} GiB"
                         for g in node["gpu_models"])
    return f"{node['gpus']:g}" if node["gpus"] else "none"


def starting_text(st: dict[str, Any]) -> str:
    return (f"the embedded local Ray cluster is starting in the background "
            f"({time.time() - st['since']:.0f} s so far; log: {st['log']}); the next cell waits "
            "for it")


def format_text(st: dict[str, Any]) -> str:
    if st.get("state") == "starting":
        return starting_text(st)
    kind = {"embedded": "embedded local Ray", "client": "Ray client", "address": "Ray cluster"}
    tls = "TLS on (encrypted, certificate-checked)" if st.get("tls") else "TLS off"
    lines = [f"{kind.get(st['kind'], st['kind'])} at {st['address']}; {tls}",
             f"dashboard: {st['dashboard_url'] or 'not available'}",
             f"resources: {st['free']['CPU']:g}/{st['total']['CPU']:g} CPUs free, "
             f"{st['free']['GPU']:g}/{st['total']['GPU']:g} GPUs free, "
             f"{st['free']['memory'] / GiB:.1f}/{st['total']['memory'] / GiB:.1f} GiB free",
             f"nodes ({sum(n['alive'] for n in st['nodes'])} alive):"]
    for n in st["nodes"]:
        lines.append(f"  {'*' if n['head'] else ' '} {n['hostname'] or n['address']:<20} "
                     f"{'alive' if n['alive'] else 'dead ':<5}  {n['cpus']:g} CPUs  "
                     f"GPUs: {gpu_text(n)}  {n['memory'] / GiB:.1f} GiB")
    jobs = st["running_jobs"]
    lines.append(f"running Lepton jobs: {len(jobs) or 'none'}")
    for j in jobs:
        lines.append(f"  {j['id']}  {j['kind']:<10} {j['name'] or '':<16} {j['user']:<10} "
                     f"{j['age_s']:.0f} s")
    g = st.get("group")
    if g:
        lines.append(f"warm group: {g['world']} rank(s), {g['cpus']:g} CPU / {g['gpus']:g} GPU "
                     f"each, backend {g['backend']}")
    w = st.get("warm_cell")
    if w:
        state = "running a cell" if w["busy"] else (
            f"idle {w['idle_s']:.0f} s, given back after {w['keep_s']:g} s" if w["ready"]
            else "starting")
        lines.append(f"warm cell worker: {w['cpus']:g} CPU, pid {w['pid'] or '?'}, "
                     f"{w['cells']} cell(s), {state}")
    return "\n".join(lines)
