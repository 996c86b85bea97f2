"""The kernel side of a remote cell: ship, submit, stream, cancel, pull back."""

from __future__ import annotations

import builtins
import time
import types
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..cluster import current, drop_dead_connection, ensure_connected, head_alive
from ..config import get_config
from ..errors import (
    CellTimeout,
    ClusterUnavailable,
    InfeasibleRequest,
    JobCancelled,
    LeptonError,
    RemoteError,
    SerializationError,
    WorkerDied,
)
from ..store import get_store
from . import _warm
from ._analysis import CellAnalysis, analyze, is_builtin
from ._sink import LogTee, Sink
from ._spec import CellSpec
from ._values import unpack_values

GiB = 1024**3


def new_job_id() -> str:
    return time.strftime("%m%d") + "-" + uuid.uuid4().hex[:8]


@dataclass
class CellOutcome:
    """What a finished cell left behind."""

    job_id: str
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    per_rank: dict[Any, dict] = field(default_factory=dict)


# -- shipping values -------------------------------------------------------------------------
def ship_values(names: Iterable[str], namespace: dict[str, Any],
                skip: Callable[[str, Any], bool] | None = None) -> dict[str, tuple]:
    """Put each read variable into the object store once; modules travel by name.

    A value that cannot be pickled raises :class:`SerializationError` naming it, and nothing
    is submitted (refs already put are dropped with the dict).
    """
    import ray

    shipped: dict[str, tuple] = {}
    for name in sorted(names):
        if name not in namespace:
            continue
        value = namespace[name]
        if skip is not None and skip(name, value):
            continue
        if isinstance(value, types.ModuleType):
            shipped[name] = ("module", value.__name__)
            continue
        if is_builtin(name) and value is getattr(builtins, name):
            continue
        try:
            shipped[name] = ("ref", ray.put(value))
        except Exception as exc:  # ray wraps pickling failures in TypeError and others
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise SerializationError(
                f"cannot send variable '{name}' ({type(value).__module__}.{type(value).__qualname__})"
                f" to the cluster: it cannot be pickled ({reason}). Create it inside the cell "
                "instead; nothing was sent") from None
    return shipped


# -- resources -------------------------------------------------------------------------------
_NODES_CACHE: tuple[float, list[dict[str, float]]] = (0.0, [])


def _node_capacities(max_age: float = 10.0) -> list[dict[str, float]]:
    """Alive nodes' total resources (cached briefly: nodes join and leave on a human timescale)."""
    global _NODES_CACHE
    import ray

    stamp, nodes = _NODES_CACHE
    if time.monotonic() - stamp > max_age or not nodes:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        _NODES_CACHE = (time.monotonic(), nodes)
    return nodes


def _describe(res: dict[str, float]) -> str:
    return (f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
            f"{res.get('memory', 0) / GiB:.1f} GiB memory")


def check_feasible(spec: CellSpec, count: int = 1) -> None:
    """Fail at once (not after Ray's endless wait) if no node could ever run the request."""
    need = {"CPU": spec.cpus_per_task, "GPU": spec.gpus, "memory": float(spec.memory or 0)}
    nodes = _node_capacities()
    fits = [n for n in nodes if all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v)]
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU", "memory")}
    asked = _flags(spec)
    if not fits:
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0))) if nodes else {}
        raise InfeasibleRequest(
            f"{asked} cannot be scheduled: no node has that much (largest node: "
            f"{_describe(largest)}; cluster: {len(nodes)} node(s), {_describe(total)}). Ask for "
            "less, or `%lepton connect` to a bigger cluster")
    if count > 1:
        slots = sum(min(int(n.get(k, 0.0) // v) for k, v in need.items() if v) if any(
            need.values()) else count for n in fits)
        if slots < count:
            raise InfeasibleRequest(
                f"--workers {count} with {asked} per rank cannot be scheduled: the cluster fits "
                f"only {slots} such rank(s) ({_describe(total)} in all). Ask for fewer workers "
                "or less per rank")


def _flags(spec: CellSpec) -> str:
    parts = [f"--cpus {spec.cpus_per_task:g}"]
    if spec.gpus:
        parts.append(f"--gpus {spec.gpus:g}")
    if spec.memory:
        parts.append(f"--memory {spec.memory / GiB:.1f}GiB")
    return " ".join(parts)


def _waiting_note(spec: CellSpec) -> str | None:
    import ray

    avail = ray.available_resources()
    short = []
    if avail.get("CPU", 0) + 1e-9 < spec.cpus_per_task:
        short.append(f"{spec.cpus_per_task:g} CPU (free: {avail.get('CPU', 0):g})")
    if spec.gpus and avail.get("GPU", 0) + 1e-9 < spec.gpus:
        short.append(f"{spec.gpus:g} GPU (free: {avail.get('GPU', 0):g})")
    if not short:
        return None
    return "waiting for resources: " + ", ".join(short) + "; other jobs hold them (`%lepton status`)"


# -- streaming -------------------------------------------------------------------------------
def _ray_failure(exc: BaseException, where: str) -> LeptonError:
    """Translate Ray's failure for a remote cell into a Lepton error the user can act on."""
    import ray.exceptions as rex

    if isinstance(exc, getattr(rex, "OutOfMemoryError", ())):
        return WorkerDied(f"{where} was killed because its node ran out of memory; use less "
                          "memory in the cell or ask for more with --memory")
    if isinstance(exc, (rex.WorkerCrashedError, rex.ActorDiedError, rex.NodeDiedError,
                        getattr(rex, "ActorUnavailableError", rex.ActorDiedError))):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return WorkerDied(f"{where} died while running the cell (killed, out of memory or its "
                          f"node was lost): {first[:200]}")
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return RemoteError(type(cause).__name__, str(cause)[:2000],
                           str(exc).splitlines()[-8:], where)
    return WorkerDied(f"{where} failed: {type(exc).__name__}: {str(exc)[:200]}")


class RankDied(Exception):
    """Raised by :func:`consume` with ``fail_fast`` as soon as one rank's worker dies."""

    def __init__(self, rank: Any, results: dict[Any, dict]):
        super().__init__(rank)
        self.rank, self.results = rank, results


def consume(streams: dict[Any, Any], on_event: Callable[[Any, tuple], None], *,
            deadline: float | None, idle: Callable[[float], None] | None = None,
            fail_fast: bool = False, job_id: str | None = None) -> dict[Any, dict]:
    """Drain streaming generators ``{generator: rank}`` until each has sent ``done``.

    Returns ``{rank: result}``; a rank whose worker failed gets ``{"status": "died", ...}``.
    Waits in short slices, so KeyboardInterrupt lands within ~0.1 s. Raises
    :class:`CellTimeout` when ``deadline`` (monotonic) passes. With ``fail_fast``, a dead
    rank raises :class:`RankDied` at once (its peers may be blocked in a collective on it).
    With ``job_id``, a cancellation recorded by another session (the sidebar, `%lepton
    cancel`) is noticed within about a second and raises :class:`JobCancelled`. A head that
    stops answering (checked every 2 s) raises :class:`ClusterUnavailable` within seconds,
    where Ray itself would wait on it for good.
    """
    import ray

    pending = dict(streams)
    results: dict[Any, dict] = {}
    started = time.monotonic()
    next_check = started + 1.0          # a cell that ends within a second reads nothing
    next_idle = started + 1.0
    conn = current()
    last_alive = [started]              # when the head last answered (or the wait began)

    def check_head(max_age: float) -> None:
        """Probe the head unless it answered within ``max_age`` seconds."""
        if conn is None or time.monotonic() - last_alive[0] < max_age:
            return
        if not head_alive(conn):
            raise ClusterUnavailable(drop_dead_connection(conn))
        last_alive[0] = time.monotonic()

    while pending:
        check_head(2.0)
        if job_id is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            if get_store().get_job(job_id).status == "cancelled":
                raise JobCancelled("cancelled from another session (the sidebar, `%lepton "
                                   "cancel` or `lepton cancel`); the remote work was stopped")
        slice_ = 0.1
        if deadline is not None:
            slice_ = max(0.0, min(slice_, deadline - time.monotonic()))
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=slice_)
        for gen in ready:
            rank = pending[gen]
            try:
                ref = next(gen)
            except StopIteration:
                pending.pop(gen)
                results.setdefault(rank, {"status": "died", "error": None})
                continue
            try:
                batch = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - worker death, cancellation
                # a dead head takes its workers with it: say that, not "the worker died"
                check_head(0.0)
                pending.pop(gen)
                results[rank] = {"status": "died", "exception": exc}
                if fail_fast and pending:
                    raise RankDied(rank, results) from None
                continue
            for event in batch:
                if event[0] == "done":
                    results[rank] = event[1]
                else:
                    on_event(rank, event)
        if deadline is not None and time.monotonic() >= deadline and pending:
            raise CellTimeout("timeout")
        if idle is not None and not ready and time.monotonic() >= next_idle:
            # the callback may ask Ray's state API, which waits for good on a dead head
            next_idle = time.monotonic() + 1.0
            check_head(0.5)
            idle(time.monotonic() - started)
    return results


def cancel_streams(gens: Iterable[Any], wait: float = 2.0) -> None:
    """Force-cancel one-shot tasks (their worker processes are killed, resources freed).
    Nothing to do once the connection was dropped (its head is gone, and the tasks with it)."""
    import ray

    if current() is None:
        return
    gens = list(gens)
    for gen in gens:
        try:
            ray.cancel(gen, force=True)
        except Exception:  # noqa: BLE001 - already finished
            pass
    await_end(gens, wait)


def await_end(gens: Iterable[Any], wait: float) -> None:
    """Read stopped streams to their end (bounded by ``wait`` seconds), so that Ray has freed
    their resources when the cell returns."""
    import ray

    deadline = time.monotonic() + wait
    pending = list(gens)
    while pending and time.monotonic() < deadline:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
        still = []
        for gen in ready:
            try:
                ray.get(next(gen))
                still.append(gen)
            except Exception:  # noqa: BLE001 - StopIteration or the cancellation error
                pass
        pending += still


# -- one-shot cells --------------------------------------------------------------------------
_TASK = None


def _remote_task():
    global _TASK
    if _TASK is None:
        import ray

        from ._executor import run_task

        _TASK = ray.remote(max_retries=0)(run_task)
    return _TASK


def build_payload(an: CellAnalysis, spec: CellSpec, values: dict[str, tuple]) -> dict[str, Any]:
    return {"source": an.source, "filename": an.filename, "values": values,
            "assigns": list(an.assigns), "out": list(spec.out) if spec.out else None,
            "pull": spec.pull, "env": list(spec.env),
            "interval": get_config().stream_interval}


def finish_outcome(job_id: str, results: dict[Any, dict], where: Callable[[Any], str]
                   ) -> CellOutcome:
    """Turn per-rank results into an outcome, raising the first failure (rank order)."""
    outcome = CellOutcome(job_id, "succeeded", per_rank=results)
    for rank in sorted(results, key=lambda r: -1 if r is None else r):
        res = results[rank]
        status = res.get("status")
        if status == "died":
            exc = res.get("exception")
            if exc is not None:
                raise _ray_failure(exc, where(rank))
            raise WorkerDied(f"{where(rank)} died: {res.get('message') or 'no details'}")
        if status == "error":
            err = res["error"]
            raise RemoteError(err["ename"], err["evalue"], err["traceback"], where(rank))
        if status == "interrupted":
            raise KeyboardInterrupt
    first = results[min(results, key=lambda r: -1 if r is None else r)]
    outcome.skipped = dict(first.get("skipped") or {})
    outcome.values = unpack_values(first.get("values") or {}, outcome.skipped)
    outcome.elapsed = float(first.get("elapsed", 0.0))
    return outcome


def record_submission(kind: str, body: str, an: CellAnalysis, spec: CellSpec, cluster: str,
                      origin: str | None) -> str:
    """A new job id, recorded in the store with its audit entry (before anything runs)."""
    job_id = new_job_id()
    record_job(job_id, kind, body, an, spec, cluster, origin)
    return job_id


def record_job(job_id: str, kind: str, body: str, an: CellAnalysis, spec: CellSpec,
               cluster: str, origin: str | None) -> None:
    """The job's record and its audit entry, in one transaction."""
    get_store().create_job(job_id, kind=kind, name=spec.name, cluster=cluster,
                           resources=spec.resources(), source=body,
                           source_hash=an.source_hash, origin=origin, fetch=False)


class Recorder:
    """Ends a job's record in the store however the block ends: succeeded, cancelled (Ctrl-C),
    timeout, or failed with the error's text. The output log goes along."""

    def __init__(self, job_id: str, tee: LogTee):
        self.job_id, self.tee = job_id, tee

    def __enter__(self) -> "Recorder":
        self.tee.job_id = self.job_id
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        status, error = "succeeded", None
        if isinstance(exc, KeyboardInterrupt):
            status, error = "cancelled", "interrupted by the user"
        elif isinstance(exc, CellTimeout):
            status, error = "timeout", str(exc)
        elif isinstance(exc, JobCancelled):
            status, error = "cancelled", "cancelled from another session"
        elif isinstance(exc, ClusterUnavailable):
            status, error = "lost", str(exc)
        elif isinstance(exc, RemoteError):
            status, error = "failed", f"{exc.ename}: {exc.evalue}"
        elif exc is not None:
            status, error = "failed", str(exc) or type(exc).__name__
        self.tee.close()
        store = get_store()
        for text in self.tee.warnings:
            store.add_job_warning(self.job_id, text)
        store.finish_job(self.job_id, status, error=error[:2000] if error else None,
                         log=self.tee.text)
        if isinstance(exc, JobCancelled):       # already final: keep the output log anyway
            store.set_job_log(self.job_id, self.tee.text)


def apply_outcome(outcome: CellOutcome, namespace: dict[str, Any], tee: Sink,
                  where: str) -> None:
    """Put the pulled values into the kernel's namespace; say which names stayed ``where``."""
    namespace.update(outcome.values)
    for name, why in outcome.skipped.items():
        tee.status(f"'{name}' stayed on {where}: {why}")


def run_cell(body: str, namespace: dict[str, Any], spec: CellSpec, sink: Sink, *,
             origin: str | None = None) -> CellOutcome:
    """Run ``body`` as a one-shot task on the cluster, streaming its output into ``sink``.

    Reads variables from ``namespace`` and writes the cell's assigned names back into it.
    Ctrl-C (KeyboardInterrupt) or ``spec.timeout`` cancels the remote work and frees it.
    """
    if spec.workers is not None:
        from ._group import run_group_cell

        return run_group_cell(body, namespace, spec, sink, origin=origin)
    an = analyze(body)                      # SyntaxError here: nothing was sent
    conn = ensure_connected(keep_warm=True)
    check_feasible(spec)
    values = ship_values(an.reads, namespace)
    payload = build_payload(an, spec, values)
    tee = LogTee(sink)
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    if conn.is_client:
        job_id = record_submission("cell", body, an, spec, conn.address, origin)
        from ._jobs import run_through_keeper

        return run_through_keeper(job_id, payload, spec, namespace, tee, deadline)
    job_id = new_job_id()
    noted = []      # a note was shown, or the task was seen running: no note (any more)

    def on_event(_rank: Any, event: tuple) -> None:
        noted.append(True)
        tee.handle(event)

    def idle(waited: float) -> None:
        if waited > 5 and not noted:
            noted.append(True)
            note = _waiting_note(spec)
            if note:
                tee.status(note)

    gens: list[Any] = []
    worker = None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        if worker is not None:
            _warm.stop_running(worker)
            await_end(gens, 2.0)
        else:
            cancel_streams(gens)

    with Recorder(job_id, tee):
        try:
            # submitted inside the try: a Ctrl-C right after submission still cancels it
            worker = _warm.take(spec)       # the kernel's warm worker, or None: a task
            if worker is not None:
                gens.append(worker.run.options(name=f"lepton:{job_id}").remote(payload))
            else:
                gens.append(_remote_task().options(name=f"lepton:{job_id}",
                                                   **spec.ray_options()).remote(payload))
            # recorded (job and audit entry, one transaction) while the task runs: off the
            # cell's critical path, and still committed before its outcome is shown
            record_job(job_id, "cell", body, an, spec, conn.address, origin)
            results = consume({gens[0]: None}, on_event, deadline=deadline, idle=idle,
                              job_id=job_id)
        except KeyboardInterrupt:
            stop()
            tee.status("interrupted: the remote work was cancelled and its resources freed")
            raise
        except JobCancelled:
            stop()
            raise
        except CellTimeout:
            stop()
            raise CellTimeout(f"the cell ran past --timeout {spec.timeout:g} s; the remote work "
                              "was cancelled and its resources freed") from None
        except BaseException:
            stop()   # e.g. the record could not be written: nothing runs on
            raise
        finally:
            if not stopped:
                healthy = all(r.get("status") != "died" for r in results.values())
                _warm.cell_ended(spec, worker, healthy)
        outcome = finish_outcome(job_id, results, lambda _r: "remote cell")
        apply_outcome(outcome, namespace, tee, "the cluster")
        return outcome
