"""Detached jobs: cells that outlive the kernel, and attaching to them again.

``%%lepton --detach`` hands the cell to a *keeper*: a small detached Ray actor (no CPU of its
own, named ``lepton-job-<id>`` in the ``lepton`` namespace) that submits the cell as an
ordinary task, keeps every output event and the final result, and answers polls. Any kernel
connected to the same cluster can then follow the output, attach (replay the output and pull
the variables), read the logs or cancel. The keeper exits ``job_ttl_hours`` after the job ends.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ..cluster import NAMESPACE, ensure_connected
from ..config import get_config
from ..errors import (
    CellTimeout,
    JobNotFound,
    LeptonError,
    LeptonUsageError,
    RemoteError,
    WorkerDied,
)
from ..store import JobRecord, get_store
from ._analysis import analyze
from ._sink import LogTee, Sink
from ._spec import CellSpec

if TYPE_CHECKING:
    from ._runner import CellOutcome

EVENT_BYTES_LIMIT = 64 * 1024 * 1024  # output kept per job; older text is dropped beyond it
RELEASE_GRACE_S = 3600.0  # a keeper lives this long after someone attached and pulled results

#: How a keeper drives a job other than a plain cell: ``(task_factory, opts)``. The factory is
#: a module-level function of a feature package (pickled by reference) that returns a Ray
#: streaming task taking ``(payload, opts)``; the keeper adds a ``ledger`` to ``opts`` (see
#: :mod:`._guard`). This is how ``training`` hands its run to this layer without this layer
#: importing ``training``.
Driver = tuple[Callable[[], Any], dict[str, Any]]


def driver_name(task_factory: Callable[[], Any]) -> str:
    """``_train_task`` -> ``train``: the task's name on the Ray dashboard."""
    return task_factory.__name__.strip("_").removesuffix("_task") or "job"


class _Keeper:
    """Owns one detached cell run on the cluster (a threaded, CPU-less, detached actor)."""

    def __init__(self, job_id: str, payload: dict[str, Any], options: dict[str, Any],
                 ttl_s: float, driver: Driver | None = None):
        self.job_id, self.ttl_s = job_id, ttl_s
        self.events: list[tuple] = []
        self.dropped = 0
        self.size = 0
        self.result: dict[str, Any] | None = None
        self.state = "running"
        self.cond = threading.Condition()
        self.ledger = None
        if driver is None:
            from ._runner import _remote_task

            self.gen = _remote_task().options(name=f"lepton:{job_id}", **options).remote(payload)
        else:  # e.g. a detached training run: the keeper drives it, as a cell would
            import ray

            from ._guard import Ledger

            task_factory, opts = driver
            self.ledger = ray.remote(num_cpus=0)(Ledger).remote()
            self.gen = task_factory().options(name=f"lepton-{driver_name(task_factory)}:"
                                              f"{job_id}").remote(
                payload, dict(opts, ledger=self.ledger))
        self.started = time.time()
        threading.Thread(target=self._follow, daemon=True, name="lepton-keeper").start()

    def _follow(self) -> None:
        import ray

        try:
            for ref in self.gen:
                for event in ray.get(ref):
                    if event[0] == "done":
                        self._finish(event[1])
                    else:
                        self._add(event)
        except Exception as exc:  # noqa: BLE001 - cancelled, or the worker died
            with self.cond:
                if self.state == "cancelling":
                    self._finish({"status": "cancelled"})
                else:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    self._finish({"status": "died", "message": f"{type(exc).__name__}: "
                                  f"{first[:300]}"})
        with self.cond:
            if self.result is None:
                self._finish({"status": "died", "message": "the task ended without a result"})
        self._arm(self.ttl_s)

    def _arm(self, seconds: float) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def release(self, grace_s: float) -> None:
        """The results were pulled: keep them ``grace_s`` more (other kernels may attach),
        then exit instead of holding the process for the whole TTL."""
        with self.cond:
            if self.result is not None:
                self._arm(min(grace_s, self.ttl_s))

    def _add(self, event: tuple) -> None:
        with self.cond:
            self.events.append(event)
            self.size += len(repr(event)) if event[0] != "stream" else len(event[2])
            while self.size > EVENT_BYTES_LIMIT and len(self.events) > 1:
                old = self.events.pop(0)
                self.size -= len(repr(old)) if old[0] != "stream" else len(old[2])
                self.dropped += 1
            self.cond.notify_all()

    def _finish(self, result: dict[str, Any]) -> None:
        with self.cond:
            if self.result is None:
                self.result = result
                st = result.get("status")
                self.state = {"ok": "succeeded", "error": "failed", "interrupted": "cancelled"
                              }.get(st, st or "failed")
            self.cond.notify_all()

    def _expire(self) -> None:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    # -- the API kernels call ---------------------------------------------------------------
    def poll(self, since: int, timeout: float) -> dict[str, Any]:
        """Events after index ``since`` (waiting up to ``timeout`` for new ones)."""
        with self.cond:
            start = since - self.dropped
            self.cond.wait_for(lambda: len(self.events) > start or self.result is not None,
                               timeout=timeout)
            start = max(0, since - self.dropped)
            events = self.events[start:]
            summary = None
            if self.result is not None:
                summary = {k: v for k, v in self.result.items() if k not in ("values",)}
            return {"events": events, "next": self.dropped + len(self.events),
                    "state": self.state, "result": summary, "dropped_before": self.dropped}

    def values(self) -> dict[str, Any] | None:
        with self.cond:
            return None if self.result is None else self.result

    def cancel(self) -> str:
        import ray

        with self.cond:
            if self.result is not None:
                return self.state
            self.state = "cancelling"
        ray.cancel(self.gen, force=True)
        if self.ledger is not None:  # Ray keeps a killed run's placement groups: free them
            from ._guard import release_placement_groups

            release_placement_groups(self.ledger)
        with self.cond:
            self.cond.wait_for(lambda: self.result is not None, timeout=5.0)
            if self.result is None:
                self._finish({"status": "cancelled"})
            return self.state


_KEEPER_CLS = None


def _keeper_cls():
    global _KEEPER_CLS
    if _KEEPER_CLS is None:
        import ray

        _KEEPER_CLS = ray.remote(num_cpus=0, max_concurrency=16, max_restarts=0)(_Keeper)
    return _KEEPER_CLS


def keeper_name(job_id: str) -> str:
    return f"lepton-job-{job_id}"


def submit_detached(body: str, namespace: dict[str, Any], spec: CellSpec, *,
                    origin: str | None = None) -> str:
    """Submit ``body`` as a detached job; returns its id at once."""
    from ._runner import build_payload, check_feasible, record_submission, ship_values

    an = analyze(body)
    conn = ensure_connected()
    check_feasible(spec)
    values = ship_values(an.reads, namespace)
    payload = build_payload(an, spec, values)
    job_id = record_submission("detached", body, an, spec, conn.address, origin)
    start_keeper(job_id, payload, spec.ray_options())
    return job_id


def start_keeper(job_id: str, payload: dict[str, Any], options: dict[str, Any], *,
                 driver: Driver | None = None) -> None:
    """Start the detached keeper that runs a recorded job (a cell, or what ``driver`` drives,
    e.g. a training run) and holds its output for any kernel that attaches."""
    ttl = get_config().job_ttl_hours * 3600.0
    try:
        _keeper_cls().options(name=keeper_name(job_id), namespace=NAMESPACE,
                              lifetime="detached").remote(job_id, payload, options, ttl,
                                                          driver)
    except Exception as exc:
        get_store().finish_job(job_id, "failed", error=f"could not submit: {exc}")
        finish_run_record(job_id, {"status": "error", "message": f"could not submit: {exc}"})
        raise


def _keeper(job_id: str):
    import ray

    try:
        return ray.get_actor(keeper_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None


def finish_run_record(job_id: str, result: dict[str, Any], history: list | None = None,
                      latest: dict[str, Any] | None = None) -> None:
    """Close the run recorded under ``job_id`` (a training run) from its driving task's final
    result, once; later calls, and jobs without a run (plain cells), are no-ops."""
    store = get_store()
    try:
        rec = store.get_run(job_id)
    except LeptonError:
        return
    if rec.done:
        return
    run = result.get("run") or {}
    status = {"ok": "succeeded", "cancelled": "cancelled", "interrupted": "cancelled"}.get(
        result.get("status"), "failed")
    error = None
    if status == "failed":
        err = result.get("error") or {}
        error = (f"{err.get('ename')}: {err.get('evalue')}" if err
                 else result.get("message") or result.get("status"))
    store.update_run(job_id, status=status, error=str(error)[:2000] if error else None,
                     history=history, metrics=run.get("metrics") or latest,
                     best_checkpoint=run.get("best_checkpoint"),
                     last_checkpoint=run.get("last_checkpoint"))


def _register_trained(job_id: str, names: list[str], namespace: dict[str, Any],
                      sink: Sink) -> None:
    """A detached training run's modules go into the registry, as an attached cell's do."""
    from ..registry import register_run_models

    try:
        run = get_store().get_run(job_id)
    except JobNotFound:
        return                     # a plain detached cell: not a training run
    register_run_models(names, namespace, run_id=job_id, run_name=run.name,
                        checkpoint=run.best_checkpoint or run.last_checkpoint,
                        say=sink.status)


def _final_status(state: str) -> str | None:
    return state if state in ("succeeded", "failed", "cancelled", "died") else None


def refresh(job: JobRecord, timeout: float = 2.0) -> JobRecord:
    """Bring a detached job's recorded status up to date from its keeper."""
    import ray

    if job.kind != "detached" or job.status != "running":
        return job
    ensure_connected()
    keeper = _keeper(job.id)
    store = get_store()
    if keeper is None:
        store.finish_job(job.id, "lost", error="its keeper is gone (cluster restarted, or "
                                               "the job expired)")
        return store.get_job(job.id)
    try:
        info = ray.get(keeper.poll.remote(1 << 62, 0.0), timeout=timeout)
    except Exception:  # noqa: BLE001 - keeper busy or dying: leave the record as it is
        return job
    status = _final_status(info["state"])
    if status:
        res = info.get("result") or {}
        store.finish_job(job.id, status, error=_error_text(res))
        finish_run_record(job.id, res)
    return store.get_job(job.id)


def _error_text(res: dict[str, Any]) -> str | None:
    if res.get("status") == "error" and res.get("error"):
        return f"{res['error']['ename']}: {res['error']['evalue']}"[:2000]
    return res.get("message")


def follow(job_id: str, sink: Sink, *, since: int = 0, stop: threading.Event | None = None,
           on_done: Callable[[dict[str, Any]], None] | None = None,
           poll_timeout: float = 0.5) -> dict[str, Any]:
    """Stream a detached job's output into ``sink`` until it ends (or ``stop`` is set).

    Returns the last poll (``state``, ``result``). KeyboardInterrupt stops following only:
    the job keeps running on the cluster.
    """
    import ray

    keeper = _keeper(job_id)
    if keeper is None:
        raise JobNotFound(f"job {job_id} has no keeper on this cluster any more (it expired, "
                          "or the cluster restarted); `%lepton logs` shows its recorded output")
    tee = LogTee(sink)
    info: dict[str, Any] = {"state": "running", "result": None}
    try:
        while stop is None or not stop.is_set():
            ref = keeper.poll.remote(since, poll_timeout)
            while True:  # short waits, so Ctrl-C lands at once
                ready, _ = ray.wait([ref], timeout=0.1)
                if ready:
                    break
                if stop is not None and stop.is_set():
                    return info
            info = ray.get(ref)
            if since < info["dropped_before"]:
                tee.status(f"{info['dropped_before'] - since} early output event(s) were "
                           "dropped (output limit)")
            for event in info["events"]:
                tee.handle(event)
            since = info["next"]
            if info["result"] is not None:
                break
    finally:
        tee.close()
    info["next"] = since
    if info["result"] is not None:
        status = _final_status(info["state"]) or "failed"
        get_store().finish_job(job_id, status, error=_error_text(info["result"]), log=tee.text)
        monitor = tee.monitor   # a training run: its history came with the replayed events
        finish_run_record(job_id, info["result"], monitor.history if monitor else None,
                          dict(monitor.latest) if monitor else None)
        if on_done is not None:
            on_done(info)
    return info


def attach(ref: str, namespace: dict[str, Any], sink: Sink) -> JobRecord:
    """Replay a detached job's output, wait for it, and pull its variables into ``namespace``."""
    import ray

    from ._values import unpack_values

    ensure_connected()
    job = get_store().find_job(ref)
    if job.kind != "detached":
        raise LeptonUsageError(f"job {job.id} was not detached (it ran in its cell); "
                               "`%lepton logs` shows its output")
    info = follow(job.id, sink)
    result = info["result"] or {}
    status = result.get("status")
    if status == "error":
        err = result["error"]
        raise RemoteError(err["ename"], err["evalue"], err["traceback"], f"job {job.id}")
    if status == "died":
        raise WorkerDied(f"job {job.id}: {result.get('message')}")
    if status in ("cancelled", "interrupted"):
        sink.status(f"job {job.id} was cancelled; no variables to pull")
        return get_store().get_job(job.id)
    if status == "stopped":   # a training run stopped early (--stop-on-nan)
        raise LeptonError(f"{result.get('message')}; checkpoints so far are in training run "
                          f"{job.id} (`%lepton runs {job.id}`)")
    full = ray.get(_keeper(job.id).values.remote(), timeout=60)
    skipped = dict(full.get("skipped") or {})
    namespace.update(unpack_values(full.get("values") or {}, skipped))
    _keeper(job.id).release.remote(RELEASE_GRACE_S)
    names = sorted(full.get("values") or {})
    if names:
        sink.status(f"job {job.id} pulled: {', '.join(names)}")
    _register_trained(job.id, names, namespace, sink)
    for name, why in skipped.items():
        sink.status(f"'{name}' stayed on the cluster: {why}")
    return get_store().get_job(job.id)


def cancel(ref: str) -> JobRecord:
    """Cancel a job: a detached one through its keeper; a cell running in some kernel by
    recording it cancelled, which that kernel notices within about a second (it then stops
    the remote work and frees its resources)."""
    import ray

    ensure_connected()
    store = get_store()
    job = store.find_job(ref)
    if job.status != "running":
        return job
    keeper = _keeper(job.id) if job.kind == "detached" else None
    if keeper is not None:
        state = ray.get(keeper.cancel.remote(), timeout=15)
        store.finish_job(job.id, _final_status(state) or "cancelled", error="cancelled")
        finish_run_record(job.id, {"status": "cancelled"})
    else:
        store.finish_job(job.id, "cancelled", error="cancelled from another session")
    store.audit("cancel", job_id=job.id, cluster=job.cluster, outcome="cancelled")
    return store.get_job(job.id)


def logs(ref: str) -> tuple[JobRecord, str]:
    """A job's text output: live from the keeper when it has one, else the recorded log."""
    import ray

    store = get_store()
    job = store.find_job(ref)
    if job.kind == "detached" and (job.status == "running" or not job.log):
        ensure_connected()
        keeper = _keeper(job.id)
        if keeper is not None:
            info = ray.get(keeper.poll.remote(0, 0.0), timeout=15)
            text = "".join(e[2] for e in info["events"] if e[0] == "stream")
            return refresh(job), text
    return job, job.log or ""


def run_through_keeper(job_id: str, payload: dict[str, Any], spec: CellSpec,
                        namespace: dict[str, Any], tee: LogTee, deadline: float | None
                        ) -> CellOutcome:
    """Ray Client (ray://) cannot stream generator tasks to the client, so a keeper actor on
    the cluster runs the task and the kernel polls it (the same keeper as detached jobs)."""
    import ray

    from ._runner import Recorder, apply_outcome, finish_outcome

    keeper = _keeper_cls().options(namespace=NAMESPACE).remote(job_id, payload,
                                                               spec.ray_options(), 300.0)
    since = 0
    try:
        with Recorder(job_id, tee):
            try:
                while True:
                    ref = keeper.poll.remote(since, 0.5)
                    while not ray.wait([ref], timeout=0.1)[0]:
                        if deadline is not None and time.monotonic() > deadline:
                            raise CellTimeout("timeout")
                    info = ray.get(ref)
                    for event in info["events"]:
                        tee.handle(event)
                    since = info["next"]
                    if info["result"] is not None:
                        break
            except (KeyboardInterrupt, CellTimeout) as exc:
                ray.get(keeper.cancel.remote(), timeout=15)
                if isinstance(exc, KeyboardInterrupt):
                    tee.status("interrupted: the remote work was cancelled and its resources "
                               "freed")
                    raise
                raise CellTimeout(f"the cell ran past --timeout {spec.timeout:g} s; the remote "
                                  "work was cancelled and its resources freed") from None
            outcome = finish_outcome(job_id, {None: ray.get(keeper.values.remote(), timeout=120)},
                                     lambda _r: "remote cell")
            apply_outcome(outcome, namespace, tee, "the cluster")
            return outcome
    finally:
        ray.kill(keeper, no_restart=True)
