"""Driving a training or search task, and freeing everything it holds when it is stopped.

Ray keeps a placement group until the *job* that created it ends, even when the actor or task
that created it has died. A kernel is one long job, so a Ray Train or Tune run whose driving
task is killed (Ctrl-C, ``--timeout``) would keep its workers' CPUs and GPUs reserved until
the kernel exits; Ray Train's own clean-up actor polls the state API and is not always in
time. Every rank and trial therefore notes the placement group it runs in with a small
:class:`Ledger` actor the kernel owns, and on a stop the kernel removes those groups itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import CellTimeout
from ._runner import cancel_streams, consume
from ._sink import LogTee


class Ledger:
    """The placement groups a run's ranks or trials ran in (an actor that needs no CPU)."""

    def __init__(self) -> None:
        self._ids: list[str] = []

    def note(self, pg_hex: str) -> None:
        if pg_hex not in self._ids:
            self._ids.append(pg_hex)

    def ids(self) -> list[str]:
        return list(self._ids)


def note_placement_group(ledger: Any) -> None:
    """Called on a rank or in a trial: tell ``ledger`` which placement group this process is in."""
    if ledger is None:
        return
    import ray
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is None:
        return
    try:
        ray.get(ledger.note.remote(pg.id.hex()), timeout=10)
    except Exception:  # noqa: BLE001 - the run was stopped already: nothing left to note
        pass


def release_placement_groups(ledger: Any, timeout: float = 5.0) -> int:
    """Remove every placement group ``ledger`` noted; returns how many were still there."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table

    try:
        ids = ray.get(ledger.ids.remote(), timeout=timeout)
    except Exception:  # noqa: BLE001 - the ledger is gone: Ray Train's own cleaner remains
        return 0
    removed = 0
    for pg_hex in ids:
        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
        try:
            if placement_group_table(pg).get("state") in (None, "REMOVED"):
                continue
            ray.util.remove_placement_group(pg)
            removed += 1
        except Exception:  # noqa: BLE001 - removed meanwhile
            pass
    return removed


def drive(task: Any, name: str, payload: dict[str, Any], opts: dict[str, Any], tee: LogTee,
          deadline: float | None, on_stop: Callable[[BaseException], None]) -> dict[str, Any]:
    """Run a driving task (a streaming generator taking ``payload, opts``) to its result.

    Its events go to ``tee``. On Ctrl-C or at ``deadline`` the task is force-cancelled, the
    placement groups its ranks noted are removed, ``on_stop(exc)`` records the stop, and the
    exception propagates. ``opts`` gets the ``ledger`` the ranks report to.
    """
    import ray

    ledger = ray.remote(num_cpus=0, max_restarts=0)(Ledger).remote()
    gens: list[Any] = []
    try:
        gens.append(task.options(name=name).remote(payload, dict(opts, ledger=ledger)))
        return consume({gens[0]: None}, lambda _r, ev: tee.handle(ev), deadline=deadline)[None]
    except (KeyboardInterrupt, CellTimeout) as exc:
        cancel_streams(gens)
        # the controller may still be shutting its group down: catch a late one, briefly
        for _ in range(2):
            release_placement_groups(ledger)
            time.sleep(0.2)
        on_stop(exc)
        raise
    finally:
        try:
            ray.kill(ledger)
        except Exception:  # noqa: BLE001 - already gone
            pass
