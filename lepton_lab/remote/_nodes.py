"""Is that node still there? Telling a lost node from a dead process, quickly.

When a machine of the cluster dies, Ray declares its node dead only after its health checks
have failed several times in a row (~15 s with Ray's defaults). The processes that were talking
to its workers know much sooner. A node whose raylet no longer accepts connections is being
lost; :func:`lost_nodes` waits (bounded) until the cluster agrees, so that whatever is placed
next (a restarted worker group, a warm group) goes to the nodes that remain.
"""

from __future__ import annotations

import socket
import time
from typing import Any

#: At most this long we wait for the cluster to declare an unreachable node dead.
SETTLE_S = 30.0


def node_table() -> dict[str, dict[str, Any]]:
    """Every node Ray knows, alive or dead, by node id (hex)."""
    import ray

    return {n["NodeID"]: n for n in ray.nodes()}


def _reachable(address: str, port: int, timeout: float = 1.0) -> bool:
    if not address or not port:
        return True          # nothing to probe: trust the cluster's view
    try:
        with socket.create_connection((address, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def lost_nodes(node_ids: list[str] | set[str], settle_s: float = SETTLE_S) -> list[str]:
    """The nodes among ``node_ids`` that are lost: declared dead already, or not answering on
    their raylet's port and declared dead within ``settle_s`` seconds."""
    view = node_table()
    dead = {nid for nid in node_ids if not view.get(nid, {}).get("Alive", False)}
    silent = {nid for nid in node_ids if nid not in dead and not _reachable(
        view[nid].get("NodeManagerAddress", ""), view[nid].get("NodeManagerPort", 0))}
    deadline = time.monotonic() + settle_s
    while silent and time.monotonic() < deadline:
        time.sleep(0.5)
        view = node_table()
        newly = {nid for nid in silent if not view.get(nid, {}).get("Alive", False)}
        dead |= newly
        silent -= newly
    return sorted(dead)


def node_label(node_id: str, ip: str | None = None) -> str:
    """``node 3b25d392 (10.0.0.3)``: the short id Ray's own messages start with."""
    return f"node {node_id[:8]}" + (f" ({ip})" if ip else "")


def alive_capacity() -> tuple[int, float]:
    """(alive nodes, their CPUs in all), read fresh from the cluster."""
    alive = [n for n in node_table().values() if n.get("Alive")]
    return len(alive), sum(float(n.get("Resources", {}).get("CPU", 0.0)) for n in alive)
