"""Lost workers and lost nodes in a ``%%lepton train`` run: noticing them, and saying what
happened.

Ray Train restarts the whole worker group after a failure (``--max-failures``), from the
latest registered checkpoint; with ``--workers MIN-MAX`` (elastic) it restarts with as many
ranks as the cluster then has room for. Two things are added here:

* :func:`node_loss_watch`, a Ray Train controller callback. When a node dies, the surviving
  ranks fail within a second or two (their collectives lose a peer), long before Ray's health
  checks declare the node dead (~15 s by default). Ray Train's elastic policy would then size
  the new group on the stale view (the dead node's CPUs included), wait the full worker-group
  start timeout (60 s) for ranks that cannot be placed, and only then retry smaller. The
  callback sees that a rank's node no longer answers, waits (bounded) until the cluster has
  declared it dead, and has the view refreshed, so the first restart already fits the nodes
  that remain. It also tells the hub which ranks and nodes were lost.
* :func:`summarize`, which turns the hub's log (rank starts, failures, progress) into what the
  run record keeps and the one line the cell shows.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..remote._nodes import SETTLE_S, lost_nodes, node_label


# -- the record ------------------------------------------------------------------------------
def summarize(log: list[dict[str, Any]]) -> dict[str, Any]:
    """What the hub saw, in the run record's terms::

        {"world": [3, 2],                        # ranks of each worker group, in order
         "failures": [{"at": ..., "error": "...", "ranks_lost": [2],
                       "nodes_lost": [{"node_id": "...", "node_ip": "..."}],
                       "world_before": 3, "world_after": 2, "resumed_at": ...,
                       "recovery_s": 21.4, "reached_epoch": 2.5, "resume_epoch": 2,
                       "epochs_replayed": 1}]}

    ``at`` is when the controller saw the failure, ``resumed_at`` when the next group's rank 0
    started (``recovery_s`` in between); ``reached_epoch`` how far the failed group got
    (epoch + fraction of it when the loop's length is known, from the ranks' reports);
    ``resume_epoch`` the epoch the next group started from (after its checkpoint);
    ``epochs_replayed`` how many epochs run a second time, the partly done one included (at
    most ``--checkpoint-every`` when the latest checkpoint was registered before the loss).
    Unknown values are None.
    """
    groups: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None      # a failure whose next group has not started
    for ev in log:
        kind = ev.get("event")
        if kind == "failure":
            fail = {k: ev.get(k) for k in ("at", "error", "ranks_lost", "nodes_lost")}
            fail.update(world_before=current["world"] if current else None,
                        reached_epoch=current["reached"] if current else None,
                        world_after=None, resumed_at=None, resume_epoch=None)
            failures.append(fail)
            pending, current = fail, None
        elif kind == "start":
            if current is None or ev.get("rank") in current["ranks"]:   # a new worker group
                current = {"world": ev.get("world"), "ranks": set(), "reached": None,
                           "failure": pending}
                groups.append(current)
                if pending is not None:
                    pending.update(world_after=ev.get("world"), resumed_at=ev.get("at"))
                pending = None
            current["ranks"].add(ev.get("rank"))
            fail = current["failure"]
            if fail is not None and fail["resume_epoch"] is None:
                fail["resume_epoch"] = ev.get("resume_epoch")
        elif kind == "progress" and current is not None and ev.get("epoch") is not None:
            current["reached"] = max(current["reached"] or 0.0, float(ev["epoch"]))
    for fail in failures:
        reached, resume = fail["reached_epoch"], fail["resume_epoch"]
        fail["recovery_s"] = (round(fail["resumed_at"] - fail["at"], 2)
                              if fail.get("resumed_at") and fail.get("at") else None)
        fail["epochs_replayed"] = (max(math.floor(reached) - resume + 1, 0)
                                   if reached is not None and resume is not None else None)
    return {"world": [g["world"] for g in groups], "failures": failures}


def failure_line(fail: dict[str, Any]) -> str:
    """One line for the cell: ``rank 2 on node 3b25d392 (10.0.0.3) lost; continuing with 2
    ranks from epoch 3 (1 epoch replayed)``."""
    ranks = fail.get("ranks_lost") or []
    nodes = fail.get("nodes_lost") or []
    if nodes:
        who = (f"rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))} on "
               + ", ".join(node_label(str(n.get("node_id")), n.get("node_ip")) for n in nodes)
               + " lost")
    else:
        who = f"the worker group failed ({(fail.get('error') or 'a rank died')[:120]})"
    world, resume = fail.get("world_after"), fail.get("resume_epoch")
    then = f"continuing with {world} rank{'s' if world != 1 else ''}" if world else "restarting"
    if resume is not None:
        then += f" from epoch {resume}"
    replayed = fail.get("epochs_replayed")
    if replayed is not None:
        then += f" ({replayed} epoch{'s' if replayed != 1 else ''} replayed)"
    return f"{who}; {then}"


# -- on a rank ---------------------------------------------------------------------------------
def restart_epoch() -> int | None:
    """The epoch this rank's ``epochs()`` loop will start from: 0 without a restart checkpoint,
    the checkpoint's epoch + 1 with one, None when that checkpoint is not Lepton's plain file
    (a sharded one). Memory-maps the file: only the small header is read."""
    import os

    import torch
    from ray import train

    from ._helpers import CHECKPOINT_FILE

    ckpt = train.get_checkpoint()
    if ckpt is None:
        return 0
    try:
        with ckpt.as_directory() as d:
            path = os.path.join(d, CHECKPOINT_FILE)
            if not os.path.exists(path):
                return None
            blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - the record says "unknown"; training goes on
        return None
    epoch = blob.get("epoch") if isinstance(blob, dict) else None
    return None if epoch is None else int(epoch) + 1


def where_am_i() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address()}


# -- on the Train controller -------------------------------------------------------------------
def refresh_cluster_view() -> None:
    """Have Ray Train's elastic policy see the nodes alive now, not as of its last 20-s tick
    (it sizes restarts from Ray Data's AutoscalingCoordinator, which refreshes on demand)."""
    import ray

    try:
        coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
        ray.get(coordinator.get_reserved_resources.remote("lepton-node-loss", recompute=True),
                timeout=10)
    except Exception:  # noqa: BLE001 - without it the restart is only slower
        pass


def node_loss_watch(hub: Any, settle_s: float = SETTLE_S) -> Any:
    """A Ray Train callback (controller and worker group hooks) for the run of ``hub``."""
    import ray
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class NodeLossWatch(ControllerCallback, WorkerGroupCallback):
        def __init__(self) -> None:
            self.ranks: dict[int, tuple[str, str]] = {}
            self.errors: dict[int, str] = {}

        def after_worker_group_start(self, worker_group: Any) -> None:
            self.ranks = {i: (w.metadata.node_id, w.metadata.node_ip)
                          for i, w in enumerate(worker_group.get_workers())}
            self.errors = {}

        def after_worker_group_poll_status(self, status: Any) -> None:
            for rank, err in status.errors.items():
                lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
                self.errors.setdefault(rank, (lines[-1] if lines else type(err).__name__)[:300])

        def before_controller_execute_failure_decision(self, failure_decision: Any) -> None:
            at = time.time()
            nodes = {nid: ip for nid, ip in self.ranks.values()}
            lost = set(lost_nodes(set(nodes), settle_s)) if nodes else set()
            if lost:
                refresh_cluster_view()
            ranks_lost = sorted(r for r, (nid, _) in self.ranks.items() if nid in lost)
            if lost:
                error = (f"node{'s' if len(lost) > 1 else ''} lost: "
                         + ", ".join(f"{nid} ({nodes[nid]})" for nid in sorted(lost)))
            else:
                error = next(iter(self.errors.values()), "a rank failed")
            info = {"at": at, "error": error, "ranks_lost": ranks_lost,
                    "nodes_lost": [{"node_id": nid, "node_ip": nodes[nid]} for nid in sorted(lost)],
                    "decision": str(getattr(failure_decision, "value", failure_decision))}
            try:
                ray.get(hub.note_failure.remote(info), timeout=10)
            except Exception:  # noqa: BLE001 - the hub went with its driving task
                pass

    return NodeLossWatch()
