"""The warm group: N long-lived SPMD ranks that keep their state from cell to cell.

``%%lepton --workers N`` runs the cell on every rank of the kernel's group. Each rank is a
Ray actor holding a namespace and one cell thread (so thread-local state such as the CUDA
device persists, as in a kernel). ``torch.distributed`` is initialised once when the group
starts (NCCL with GPUs, gloo without), so DDP works in any cell. The group belongs to the
kernel: it dies with the kernel's driver, and a different resource request restarts it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ..cluster import ensure_connected, on_connection_lost
from ..config import get_config
from ..errors import CellTimeout, ClusterUnavailable, JobCancelled, WorkerDied
from ._analysis import analyze
from ._capture import keep_for_process
from ._executor import CellThread, new_namespace, stream_cell
from ._nodes import alive_capacity, lost_nodes, node_label
from ._sink import LogTee, RankFolder, Sink
from ._spec import CellSpec
from ._values import pack_values

GROUP_START_TIMEOUT = 180.0


class _Rank:
    """One rank of the warm group (a threaded Ray actor: cells run while interrupts arrive)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        keep_for_process()       # this actor's process is ours: route fd 1/2 once
        self.runner = CellThread()
        self.ns = new_namespace()
        self.cells = 0
        self.backend: str | None = None
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))

    def endpoint(self) -> tuple[str, int, str]:
        """(node IP, a free port, node id): rank 0's becomes MASTER_ADDR/MASTER_PORT."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ip, port, ray.get_runtime_context().get_node_id()

    def setup(self, master: tuple[str, int], local_rank: int, local_world: int,
              timeout: float) -> str | None:
        """Initialise torch.distributed on the cell thread (NCCL with a GPU, gloo without)."""
        os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]),
                          LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(local_world))

        def init() -> str | None:
            try:
                import torch
                import torch.distributed as dist
            except ImportError:
                return None
            if not dist.is_available():
                return None
            import datetime

            # Ray sets CUDA_VISIBLE_DEVICES per actor, so this rank's GPU is device 0.
            use_cuda = torch.cuda.is_available() and bool(os.environ.get("CUDA_VISIBLE_DEVICES"))
            backend = "nccl" if use_cuda else "gloo"
            if use_cuda:
                torch.cuda.set_device(0)
            dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                    timeout=datetime.timedelta(seconds=timeout))
            if use_cuda:  # make NCCL build its communicator now, not in the user's first cell
                t = torch.ones(1, device="cuda")
                dist.all_reduce(t)
                torch.cuda.synchronize()
            return backend

        self.backend = self.runner.submit(init).result(timeout=timeout + 5)
        return self.backend

    def run(self, payload: dict[str, Any]):
        self.cells += 1
        yield from stream_cell(payload, self.ns, self.runner, self.rank)

    def interrupt(self) -> bool:
        return self.runner.interrupt()

    def pull(self, names: list[str]) -> tuple[dict, dict]:
        return pack_values(self.ns, names)

    def names(self) -> list[str]:
        return sorted(k for k in self.ns if not k.startswith("_") and k not in ("display", "lepton"))

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        gpus = ctx.get_accelerator_ids().get("GPU", []) if hasattr(ctx, "get_accelerator_ids") \
            else []
        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(),
                "node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "gpus": list(gpus),
                "busy": self.runner.busy, "cells": self.cells, "backend": self.backend,
                "variables": len(self.names())}


@dataclass
class _Group:
    spec_key: tuple
    world: int
    actors: list[Any]
    pg: Any
    backend: str | None
    created: float = field(default_factory=time.time)
    synced: dict[str, Any] = field(default_factory=dict)  # name -> kernel object the ranks hold
    broken: str | None = None
    nodes: list[tuple[str, str]] = field(default_factory=list)  # each rank's (node id, IP)


_GROUP: _Group | None = None
#: The group stop_group() last stopped: `%lepton group restart` brings it back after a death.
_LAST: _Group | None = None
_ACTOR_CLS = None


def _actor_cls():
    global _ACTOR_CLS
    if _ACTOR_CLS is None:
        import ray

        _ACTOR_CLS = ray.remote(max_concurrency=4, max_restarts=0)(_Rank)
    return _ACTOR_CLS


def _spec_key(spec: CellSpec) -> tuple:
    return (spec.workers, spec.cpus_per_task, spec.gpus, spec.memory)


def _wait_interruptibly(refs: list[Any], timeout: float, what: str) -> list[Any]:
    import ray

    deadline = time.monotonic() + timeout
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
        if pending and time.monotonic() > deadline:
            raise ClusterUnavailable(f"{what} did not finish within {timeout:.0f} s; the cluster "
                                     "may be short of resources (`%lepton status`)")
    return ray.get(refs)


def _start_group(spec: CellSpec, sink: Sink) -> _Group:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ._runner import check_feasible

    world = int(spec.workers or 1)
    check_feasible(spec, count=world)
    bundle = {"CPU": spec.cpus_per_task}
    if spec.gpus:
        bundle["GPU"] = spec.gpus
    if spec.memory:
        bundle["memory"] = float(spec.memory)
    sink.status(f"starting a warm group of {world} rank(s) ({spec.cpus_per_task:g} CPU"
                f"{f', {spec.gpus:g} GPU' if spec.gpus else ''} each)")
    pg = placement_group([dict(bundle) for _ in range(world)], strategy="PACK",
                         name=f"lepton-group-{os.getpid()}")
    actors: list[Any] = []
    try:
        _wait_interruptibly([pg.ready()], GROUP_START_TIMEOUT, "reserving the group's resources")
        cls = _actor_cls()
        for rank in range(world):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)
            actors.append(cls.options(num_cpus=spec.cpus_per_task, num_gpus=spec.gpus,
                                      memory=spec.memory or None, scheduling_strategy=strategy,
                                      name=None).remote(rank, world))
        endpoints = _wait_interruptibly([a.endpoint.remote() for a in actors],
                                        GROUP_START_TIMEOUT, "starting the group's ranks")
        master = endpoints[0][:2]
        by_node: dict[str, list[int]] = {}
        for rank, (_, _, node) in enumerate(endpoints):
            by_node.setdefault(node, []).append(rank)
        setups = []
        for rank, actor in enumerate(actors):
            peers = by_node[endpoints[rank][2]]
            setups.append(actor.setup.remote(master, peers.index(rank), len(peers),
                                             GROUP_START_TIMEOUT))
        backends = _wait_interruptibly(setups, GROUP_START_TIMEOUT + 10,
                                       "initialising torch.distributed in the group")
    except BaseException:
        for a in actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(pg)
        raise
    return _Group(_spec_key(spec), world, actors, pg, backends[0],
                  nodes=[(node, ip) for ip, _, node in endpoints])


def _forget_group() -> None:
    """The cluster's head is gone, and the group's actors with it: forget them (no Ray call,
    nothing answers any more); the next group cell starts a new group."""
    global _GROUP, _LAST
    _GROUP, _LAST = None, None


on_connection_lost(_forget_group)


def stop_group() -> bool:
    """Stop the kernel's warm group and free its resources. True if there was one."""
    global _GROUP, _LAST
    group, _GROUP = _GROUP, None
    if group is None:
        return False
    _LAST = group
    import ray
    from ray.util.placement_group import remove_placement_group

    for a in group.actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
    try:
        remove_placement_group(group.pg)
    except Exception:  # noqa: BLE001
        pass
    return True


def group_info(timeout: float = 10.0) -> dict[str, Any] | None:
    """The warm group's ranks and state, or None when the kernel has none."""
    import ray

    group = _GROUP
    if group is None:
        return None
    refs = [a.info.remote() for a in group.actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ranks = []
    for i, ref in enumerate(refs):
        if ref in ready:
            try:
                ranks.append(ray.get(ref))
                continue
            except Exception:  # noqa: BLE001
                pass
        node = group.nodes[i] if i < len(group.nodes) else None
        ranks.append({"rank": i, "dead": True, "node": node_label(*node) if node else None})
    workers, cpus, gpus, memory = group.spec_key
    return {"world": group.world, "cpus": cpus, "gpus": gpus, "memory": memory,
            "backend": group.backend, "created": group.created, "ranks": ranks,
            "broken": group.broken}


def _get_group(spec: CellSpec, sink: Sink) -> _Group:
    global _GROUP
    key = _spec_key(spec)
    if _GROUP is not None and (_GROUP.spec_key != key or _GROUP.broken):
        why = _GROUP.broken or "the resources per rank or --workers changed"
        sink.status(f"restarting the warm group ({why}); its variables are lost")
        stop_group()
    if _GROUP is None:
        _GROUP = _start_group(spec, sink)
    return _GROUP


def _ship(group: _Group, names: frozenset[str], namespace: dict[str, Any]) -> dict[str, tuple]:
    """Put each read variable in the object store once (all ranks fetch the same object).

    A name whose kernel object is the very object the ranks already hold (sent by an earlier
    cell, or pulled back from rank 0) is not sent again. Rebinding it in the kernel sends it.
    """
    from ._runner import ship_values

    unchanged = {n for n in names if n in group.synced and n in namespace
                 and namespace[n] is group.synced[n]}
    return ship_values(set(names) - unchanged, namespace)


def run_group_cell(body: str, namespace: dict[str, Any], spec: CellSpec, sink: Sink, *,
                   origin: str | None = None):
    """Run ``body`` on every rank of the warm group; values come back from rank 0."""
    from ._runner import (
        CellOutcome,
        RankDied,
        Recorder,
        apply_outcome,
        build_payload,
        consume,
        finish_outcome,
        record_submission,
    )

    an = analyze(body)
    conn = ensure_connected()
    if conn.is_client:
        from ..errors import LeptonUsageError

        raise LeptonUsageError(
            "--workers needs a direct connection: Ray Client (ray://) cannot stream from the "
            "group's ranks. Connect with the head's address instead, e.g. "
            "`%lepton connect HEAD_IP:6379`")
    cfg = get_config()
    group = _get_group(spec, sink)
    values = _ship(group, an.reads, namespace)
    payload = build_payload(an, spec, values)
    job_id = record_submission("group-cell", body, an, spec, conn.address, origin)
    tee = LogTee(sink)
    folder = RankFolder(tee, group.world, spec.all_ranks, cfg.rank_tail_lines)
    gens: dict[Any, int] = {}
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    with Recorder(job_id, tee):
        try:
            # submitted inside the try: a Ctrl-C right after submission still interrupts
            for rank, actor in enumerate(group.actors):
                p = payload if rank == 0 else dict(payload, pull=False)
                gens[actor.run.remote(p)] = rank
            results = consume(gens, folder.handle, deadline=deadline, fail_fast=group.world > 1,
                              job_id=job_id)
        except RankDied as dead:
            # the other ranks may wait forever in a collective on the dead one: stop them all
            for gen, rank in list(gens.items()):
                if rank in dead.results:
                    gens.pop(gen)
            _interrupt(group, gens, folder, quiet=True)
            group.broken = f"rank {dead.rank} died"
            stop_group()
            results = dead.results
        except (KeyboardInterrupt, CellTimeout, JobCancelled) as exc:
            _interrupt(group, gens, folder)
            if isinstance(exc, CellTimeout):
                raise CellTimeout(f"the cell ran past --timeout {spec.timeout:g} s; every rank "
                                  "was interrupted") from None
            raise
        folder.finish()
        dead = sorted(r for r, res in results.items() if res.get("status") == "died")
        if dead:
            group.broken = f"rank {dead[0]} died"
            stop_group()
            lost = _lost_ranks(group, dead)
            if lost:   # the peers' collective errors are only a consequence: name the cause
                raise WorkerDied(f"{lost}. The warm group was stopped (its variables are "
                                 "lost); `%lepton group restart` starts it again on the nodes "
                                 "that remain")
        try:
            outcome: CellOutcome = finish_outcome(job_id, results, lambda r: f"rank {r}")
        except WorkerDied as exc:
            raise WorkerDied(f"{exc} The warm group was stopped; `%lepton group restart` or "
                             "the next cell starts a new one (its variables are lost)") from None
        for name in set(an.assigns) | set(an.reads):
            if name in namespace and name not in outcome.values:
                group.synced[name] = namespace[name]
        group.synced.update(outcome.values)
        for name in values:
            group.synced[name] = namespace.get(name)
        apply_outcome(outcome, namespace, tee, "the ranks")
        return outcome


def _interrupt(group: _Group, gens: dict[Any, int], folder: RankFolder,
               quiet: bool = False) -> None:
    """Interrupt every rank; ranks that do not stop within the grace period are killed."""
    from ._runner import consume

    grace = get_config().interrupt_grace
    for actor in group.actors:
        actor.interrupt.remote()
    try:
        consume(gens, folder.handle, deadline=time.monotonic() + grace)
        folder.finish()
        if not quiet:
            folder.sink.status("interrupted: every rank stopped; the group keeps its state")
    except (CellTimeout, KeyboardInterrupt):
        # A rank stuck in C code (a collective waiting for a peer, a long kernel) cannot take
        # the interrupt: kill the group so its resources are free at once.
        group.broken = "a rank did not stop when interrupted"
        stop_group()
        if not quiet:
            folder.sink.status("interrupted: ranks that did not stop were killed; the warm "
                               "group was stopped (the next cell starts a new one)")


def _lost_ranks(group: _Group, ranks: list[int]) -> str | None:
    """``rank 1 on node 3b25d392 (10.0.0.3) was lost with its node`` for the dead ``ranks``
    whose node is gone (waiting, bounded, for the cluster's verdict); None if none is."""
    where = {r: group.nodes[r] for r in ranks if r < len(group.nodes)}
    try:
        lost = set(lost_nodes({nid for nid, _ in where.values()}))
    except Exception:  # noqa: BLE001 - no verdict: the plain "rank died" message stays
        return None
    gone = [r for r, (nid, _) in where.items() if nid in lost]
    if not gone:
        return None
    return "; ".join(f"rank {r} on {node_label(*where[r])} was lost with its node"
                     for r in gone)


def restart_group(sink: Sink, workers: int | None = None) -> dict[str, Any]:
    """Restart the warm group (after a dead rank or a lost node, or to clear its state), or
    resize it to ``workers`` ranks with the same resources per rank. The ranks go to the
    nodes alive now, several to a node where its CPUs allow. Returns the new group's info."""
    global _GROUP
    from ..errors import LeptonUsageError

    previous = _GROUP or _LAST
    if previous is None:
        raise LeptonUsageError("there is no warm group to restart; `%%lepton --workers N` "
                               "starts one")
    world, cpus, gpus, memory = previous.spec_key
    spec = CellSpec(cpus=cpus, gpus=gpus, memory=memory, workers=workers or world)
    ensure_connected()
    # a node the old group ran on may be dying: let the cluster declare it dead first, so
    # that the new ranks are placed on the nodes that remain (and the count below is true)
    gone = lost_nodes({nid for nid, _ in previous.nodes})
    nodes, total = alive_capacity()
    need = spec.workers * spec.cpus_per_task
    if total + 1e-9 < need:
        lost = "".join(f"; {node_label(nid, ip)} was lost" for nid, ip in previous.nodes
                       if nid in gone)
        raise LeptonUsageError(
            f"{spec.workers} rank(s) of {spec.cpus_per_task:g} CPU need {need:g} CPUs, but the "
            f"{nodes} node(s) alive have {total:g}{lost}; `%lepton group resize "
            f"{max(int(total // spec.cpus_per_task), 1)}` runs on what remains")
    stop_group()
    _GROUP = _start_group(spec, sink)
    return group_info() or {}
