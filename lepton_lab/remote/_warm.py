"""The kernel's warm cell worker: one-shot CPU cells skip Ray's worker lease.

A one-shot cell is a Ray task, and each task asks the raylet for a worker and gives it back:
about half a millisecond of a trivial cell's two or three here. After a CPU-only cell ends,
the kernel starts, in the background, one actor with that cell's resources; the next cell
that asks for the same resources runs on it. Each cell still gets a fresh namespace, as a
task does; only the process is kept, as Ray keeps a task's worker process.

The actor holds those resources while it lives, so it is given back:

- ``warm_cell_s`` seconds after the last cell (setting; 0 keeps none);
- before any other work of this kernel asks for resources (``cluster.before_other_work``):
  a warm group, a training run, a deployment, a detached job, a cell with other resources;
- when a cell on it is interrupted, cancelled or runs past its timeout: it is killed, as a
  task's worker is;
- with the kernel, whose Ray driver owns it.

It is started only when the cluster has the CPUs free at that moment, and given up if Ray has
not placed it within :data:`PLACE_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..cluster import before_other_work, current, on_connection_lost
from ..config import get_config
from ._capture import keep_for_process
from ._executor import CellThread, new_namespace, stream_cell
from ._spec import CellSpec

#: a warm worker that Ray has not placed within this many seconds is given up
PLACE_TIMEOUT_S = 10.0


class _Worker:
    """The actor: one cell thread, a fresh namespace per cell."""

    def __init__(self) -> None:
        sys.setswitchinterval(0.0005)   # the same hand-off tuning as a task worker
        keep_for_process()
        self.runner = CellThread()

    def ready(self) -> int:
        return os.getpid()

    def run(self, payload: dict[str, Any]) -> Iterator[list[tuple]]:
        yield from stream_cell(payload, new_namespace(), self.runner)


@dataclass
class _Warm:
    actor: Any
    key: tuple
    conn: Any
    ready_ref: Any
    created: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    ready: bool = False
    busy: bool = False
    pid: int | None = None
    cells: int = 0
    timer: threading.Timer | None = None


_W: _Warm | None = None
_LOCK = threading.RLock()
#: (key, when) of the last cell that ran as a task: a worker is started for a second cell in
#: a row with the same resources, not for a lone one
_LAST_TASK: tuple[tuple | None, float] = (None, 0.0)
#: no worker is started before this time: other work took the last one back (no churn when
#: cells and other work alternate)
_QUIET_UNTIL = 0.0
_CLS = None


def _cls() -> Any:
    global _CLS
    if _CLS is None:
        import ray

        _CLS = ray.remote(max_restarts=0, max_concurrency=1)(_Worker)
    return _CLS


def _key(spec: CellSpec) -> tuple | None:
    """What a warm worker is kept for: CPU-only one-shot cells (a GPU is never held idle)."""
    if spec.gpus or spec.workers is not None or spec.detach:
        return None
    return (spec.cpus_per_task, spec.memory)


def keep_seconds() -> float:
    return max(0.0, float(get_config().warm_cell_s))


def take(spec: CellSpec) -> Any | None:
    """The warm worker for ``spec`` if one is placed and free now (marked busy), else None.

    A worker kept for other resources is given back first, so that this cell can have them.
    """
    global _W
    key = _key(spec)
    with _LOCK:
        w = _W
        if w is None:
            return None
        if w.conn is not current():     # disconnected or reconnected: it went with the driver
            forget()
            return None
        if key is None or w.key != key or keep_seconds() <= 0:
            give_back_for_other_work()
            return None
        if w.busy:
            return None
        if not w.ready:
            import ray

            if not ray.wait([w.ready_ref], timeout=0)[0]:
                if time.monotonic() - w.created > PLACE_TIMEOUT_S:
                    release()
                return None
            try:
                w.pid = ray.get(w.ready_ref, timeout=5)
            except Exception:  # noqa: BLE001 - it could not start: the task path goes on
                release()
                return None
            w.ready = True
        w.busy = True
        _cancel_timer(w)
        return w.actor


def cell_ended(spec: CellSpec, used: Any | None, healthy: bool) -> None:
    """After a cell: keep the worker it ran on for the next one (``healthy``), or start one.

    ``used`` is the actor the cell ran on (None: a task). An unhealthy worker (its process
    died) is forgotten.
    """
    global _LAST_TASK
    seconds = keep_seconds()
    now = time.monotonic()
    with _LOCK:
        w = _W
        if used is not None and w is not None and w.actor is used:
            w.busy = False
            w.cells += 1
            if not healthy:
                release()
                return
            w.last = now
            _arm_timer(w, seconds)
            return
        key = _key(spec)
        previous, _LAST_TASK = _LAST_TASK, (key, now)
        if key is None or seconds <= 0 or w is not None or not healthy:
            return
        if previous[0] != key or now - previous[1] > seconds or now < _QUIET_UNTIL:
            return
        _start(spec, key, seconds)


def _start(spec: CellSpec, key: tuple, seconds: float) -> None:
    """Start a worker in the background, only if its resources are free now (never queue one
    behind other people's work)."""
    global _W
    import ray

    conn = current()
    if conn is None or conn.is_client:
        return
    try:
        free = ray.available_resources()
    except Exception:  # noqa: BLE001 - no answer: no warm worker, cells run as tasks
        return
    if free.get("CPU", 0.0) + 1e-9 < spec.cpus_per_task or (
            spec.memory and free.get("memory", 0.0) + 1e-9 < spec.memory):
        return
    opts: dict[str, Any] = {"num_cpus": spec.cpus_per_task, "num_gpus": 0}
    if spec.memory:
        opts["memory"] = spec.memory
    actor = _cls().options(name=None, **opts).remote()
    _W = _Warm(actor=actor, key=key, conn=conn, ready_ref=actor.ready.remote())
    _arm_timer(_W, seconds)


def _arm_timer(w: _Warm, seconds: float) -> None:
    _cancel_timer(w)
    timer = threading.Timer(seconds, _expire, args=(w,))
    timer.daemon = True
    timer.name = "lepton-warm-cell"
    w.timer = timer
    timer.start()


def _cancel_timer(w: _Warm) -> None:
    if w.timer is not None:
        w.timer.cancel()
        w.timer = None


def _expire(w: _Warm) -> None:
    with _LOCK:
        if _W is w and not w.busy:
            release()


def release() -> bool:
    """Give the warm worker back (kill it; its resources are free at once). True if one was
    kept. A worker running a cell is left alone (the cell's own error path kills it)."""
    global _W
    with _LOCK:
        w = _W
        if w is None or w.busy:
            return False
        _W = None
        _kill(w)
        return True


def give_back_for_other_work() -> None:
    """Other work of this kernel asks for resources: give the worker back, and start no new
    one for a while."""
    global _QUIET_UNTIL
    with _LOCK:
        if release():
            _QUIET_UNTIL = time.monotonic() + keep_seconds()


def forget() -> None:
    """The head is gone and the worker with it: drop it without a Ray call."""
    global _W
    with _LOCK:
        if _W is not None:
            _cancel_timer(_W)
        _W = None


def stop_running(actor: Any) -> None:
    """Stop the cell running on ``actor`` (Ctrl-C, a timeout, a cancellation): kill the actor,
    as a cancelled task's worker is killed. The caller then waits for its stream to end."""
    global _W
    with _LOCK:
        w = _W
        if w is not None and w.actor is actor:
            _W = None
            _kill(w)
            return
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _kill(w: _Warm) -> None:
    _cancel_timer(w)
    if current() is None or w.conn is not current():
        return
    import ray

    try:
        ray.kill(w.actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def info() -> dict[str, Any] | None:
    """The warm worker, for `%lepton status`: resources, pid, cells run, idle seconds."""
    w = _W
    if w is None:
        return None
    cpus, memory = w.key
    return {"cpus": cpus, "memory": memory, "ready": w.ready, "busy": w.busy, "pid": w.pid,
            "cells": w.cells, "idle_s": 0.0 if w.busy else time.monotonic() - w.last,
            "keep_s": keep_seconds()}


before_other_work(give_back_for_other_work)
on_connection_lost(forget)
