"""The cluster side of ``%%lepton train``: a Ray Train ``TorchTrainer`` run, driven by a task.

The kernel submits :func:`run_train_task` as an ordinary streaming task (no CPU of its own),
so the job is cancelled, streamed, detached and recorded exactly as a plain remote cell is.
That task creates a *hub* actor and runs ``TorchTrainer.fit()``; each training worker runs
the cell body with the same executor as any cell, and pushes its output and ``train``
reports to the hub; the task folds the ranks' output (rank 0 live, others tailed) and
yields it to the kernel. Cancelling the task kills it with the hub and the Train controller it
owns; Ray Train's placement-group cleaner then frees the workers' resources.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator

from ..remote._executor import Emitter, execute, new_namespace
from ..remote._guard import note_placement_group
from ..remote._sink import RankFolder, Sink


class Hub:
    """Collects the ranks' events for the driving task (a threaded actor, no CPU).

    It also keeps the run's log of worker groups: each rank's start (attempt, world size,
    node, the epoch it resumes from), the failures the controller callback notes (see
    :mod:`._elastic`) and how far the ranks got, from which :meth:`summary` derives the
    record of lost nodes, new world sizes and replayed epochs.
    """

    def __init__(self) -> None:
        self.events: list[tuple[int | None, tuple]] = []
        self.cond = threading.Condition()
        self.starts: dict[int, int] = {}
        self.result: dict[str, Any] | None = None
        self.stopped: str | None = None
        self.refused: tuple[int, str] | None = None
        self.log: list[dict[str, Any]] = []
        self._reached: dict[tuple[int, int], float] = {}
        self._announced = 0

    def start(self, rank: int, info: dict[str, Any] | None = None) -> int:
        """A rank (re)starts; returns the attempt number (2 after one worker-group restart)."""
        with self.cond:
            self.starts[rank] = self.starts.get(rank, 0) + 1
            self.log.append(dict(info or {}, event="start", rank=rank,
                                 attempt=self.starts[rank], at=time.time()))
            if rank == 0:
                self._announce()
            return self.starts[rank]

    def note_failure(self, info: dict[str, Any]) -> None:
        """The Train controller saw the worker group fail (ranks and nodes lost, if any)."""
        with self.cond:
            self.log.append(dict(info, event="failure"))

    def _announce(self) -> None:
        """Once the group after a failure has started: one line for the cell."""
        from ._elastic import failure_line, summarize

        failures = summarize(self.log)["failures"]
        for fail in failures[self._announced:]:
            if fail["world_after"] is not None:
                self.events.append((None, ("stream", "stderr",
                                           f"lepton: {failure_line(fail)}\n")))
                self._announced += 1
                self.cond.notify_all()

    def _progress(self, rank: int, payload: dict[str, Any]) -> None:
        """Log how far this rank got (when it grew by 1/20 epoch): the epochs a failure costs."""
        attempt = int(payload.get("attempt") or 1)
        if attempt != self.starts.get(rank):
            return                       # a late report of a group that has failed
        epochs = [p[1] for p in payload.get("points") or () if p[1] is not None]
        if not epochs:
            return
        pos, last = max(epochs), self._reached.get((rank, attempt), -1.0)
        if pos >= last + 0.05 or int(pos) != int(last):
            self._reached[(rank, attempt)] = pos
            self.log.append({"event": "progress", "rank": rank, "epoch": pos})

    def summary(self) -> dict[str, Any]:
        from ._elastic import summarize

        with self.cond:
            return summarize(self.log)

    def push(self, rank: int, events: list[tuple]) -> None:
        with self.cond:
            self.events.extend((rank, ev) for ev in events)
            for ev in events:
                if ev[0] == "train":
                    self._progress(rank, ev[1])
            self.cond.notify_all()

    def drain(self, timeout: float) -> list[tuple[int | None, tuple]]:
        with self.cond:
            self.cond.wait_for(lambda: bool(self.events), timeout=timeout)
            out, self.events = self.events, []
            return out

    def set_result(self, result: dict[str, Any]) -> None:
        self.result = result

    def set_stopped(self, reason: str) -> None:
        self.stopped = self.stopped or reason

    def set_refused(self, rank: int, reason: str) -> None:
        self.refused = self.refused or (rank, reason)

    def outcome(self) -> tuple[dict[str, Any] | None, str | None, int]:
        return self.result, self.stopped, max(self.starts.values(), default=0)

    def refusal(self) -> tuple[int, str] | None:
        return self.refused


class _HubEmitter(Emitter):
    """An Emitter whose events a background thread pushes to the hub, in order."""

    def __init__(self, hub: Any, rank: int, interval: float):
        super().__init__(rank)
        self.hub, self.interval = hub, interval
        self._thread = threading.Thread(target=self._pump, daemon=True, name="lepton-hub-push")
        self._thread.start()

    def _pump(self) -> None:
        import ray

        while True:
            batch = self.drain(self.interval)
            if batch:
                ray.get(self.hub.push.remote(self.rank, batch))
            elif self._done:
                return

    def close(self) -> None:
        self.finish()
        self._thread.join(timeout=30)


class RankFailed(Exception):
    """A rank's cell raised; carries its traceback with the cell's own line numbers."""

    def __init__(self, rank: int, error: dict[str, Any]):
        lines = "".join(error.get("traceback") or [])
        super().__init__(f"rank {rank}: {error.get('ename')}: {error.get('evalue')}\n{lines}")
        self.rank, self.error = rank, error

    def __reduce__(self):
        return (RankFailed, (self.rank, self.error))


def _quiet_ray_train_logs() -> None:
    """Ray Train's INFO lines ("Reporting training result ...") are not the user's output.
    Some of its loggers are named after their file path, hence the search."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.train") or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: run the cell body on this rank."""
    import ray
    from ray import train

    from . import _checkpoint, _elastic, _helpers

    hub, payload, opts = config["hub"], config["payload"], config["opts"]
    _quiet_ray_train_logs()
    ctx = train.get_context()
    rank = ctx.get_world_rank()
    note_placement_group(opts.get("ledger"))
    info = dict(_elastic.where_am_i(), world=ctx.get_world_size())
    if rank == 0:   # the epoch the run goes on from (the failure record's "replayed epochs")
        info["resume_epoch"] = _elastic.restart_epoch()
    attempt = ray.get(hub.start.remote(rank, info))
    resume = opts.get("resume")
    if isinstance(resume, ray.ObjectRef):
        resume = ray.get(resume)
    _helpers.configure("train", attempt=attempt, resume=_checkpoint.load_checkpoint(resume)
                       if resume is not None else None, **{
                           k: opts.get(k) for k in ("checkpoint_every", "stop_on_nan", "bf16",
                                                    "strategy", "fsdp_min_params",
                                                    "cpu_offload", "privacy")})
    emitter = _HubEmitter(hub, rank, float(payload.get("interval", 0.05)))
    ns = new_namespace()
    for name in opts.get("dataset_names") or ():   # this rank's shard of each Ray dataset
        ns[name] = train.get_dataset_shard(name)
    try:
        result = execute(dict(payload, pull=payload.get("pull", True) and rank == 0), ns,
                         emitter)
    finally:
        emitter.close()
    status = result.get("status")
    if status == "error" and result["error"].get("ename") == "TrainingStopped":
        ray.get(hub.set_stopped.remote(result["error"].get("evalue", "stopped")))
        return
    if status == "error" and result["error"].get("ename") == "LeptonUsageError":
        # a usage mistake found on the rank (make_private refusing the model or the budget):
        # the same on every attempt, so end the run now instead of spending --max-failures
        ray.get(hub.set_refused.remote(rank, result["error"].get("evalue", "")))
        return
    if status != "ok":
        raise RankFailed(rank, result.get("error") or {"ename": "KeyboardInterrupt",
                                                       "evalue": "interrupted"})
    if rank == 0:
        ray.get(hub.set_result.remote(result))


class _EmitterSink(Sink):
    """Folded rank output, re-emitted by the driving task towards the kernel."""

    def __init__(self, emitter: Emitter):
        self.emitter = emitter

    def stream(self, name: str, text: str) -> None:
        self.emitter.stream(name, text)

    def handle(self, event: tuple) -> None:
        if event[0] == "stream":
            self.stream(event[1], event[2])
        else:
            self.emitter.emit(event)


def _first_failure(exc: BaseException) -> dict[str, Any]:
    """The kernel-facing error of a failed fit: the first failing rank's cell traceback."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        err = failures[rank]
        cause = err
        for _ in range(4):  # RayTaskError(cause=RankFailed) and friends
            if isinstance(cause, RankFailed):
                return {"status": "error", "rank": rank, "error": cause.error}
            cause = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
            if cause is None:
                break
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return {"status": "died", "rank": rank,
                "message": f"rank {rank} died: {first[:300]} (after the allowed "
                           "--max-failures restarts)"}
    first = (str(exc).strip().splitlines() or [type(exc).__name__])
    return {"status": "error", "rank": None,
            "error": {"ename": type(exc).__name__, "evalue": " ".join(first[:3])[:1000],
                      "traceback": []}}


def _checkpoint_paths(result: Any, metric: str | None, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {"last_checkpoint": None, "best_checkpoint": None}
    if result is None:
        return out
    if result.checkpoint is not None:
        out["last_checkpoint"] = result.checkpoint.path
    best = getattr(result, "best_checkpoints", None) or []
    if best and metric:
        scored = [(m.get(metric), c.path) for c, m in best if m.get(metric) is not None]
        if scored:
            pick = max if mode == "max" else min
            out["best_checkpoint"] = pick(scored, key=lambda t: t[0])[1]
    out["best_checkpoint"] = out["best_checkpoint"] or out["last_checkpoint"]
    out["metrics"] = dict(result.metrics or {})
    out["path"] = getattr(result, "path", None)
    return out


def run_train_task(payload: dict[str, Any], opts: dict[str, Any]) -> Iterator[list[tuple]]:
    """The driving task (a streaming generator): runs the trainer, yields folded output."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ._elastic import node_loss_watch

    # print() in the cell goes to the cell only once (Ray Train would also log each line)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    emitter = Emitter()
    folder = RankFolder(_EmitterSink(emitter), opts.get("max_workers") or opts["workers"],
                        opts.get("all_ranks", False),
                        opts.get("tail_lines", 8))
    # the hub lives beside this task (and the Train controller, which Ray Train puts on the
    # driver's node): a lost worker node takes ranks, never the run's bookkeeping
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    hub = ray.remote(num_cpus=0, max_concurrency=64, scheduling_strategy=here)(Hub).remote()
    metric, mode = opts.get("metric"), opts.get("mode") or "min"
    resources = {"CPU": opts.get("cpus_per_worker", 1)}
    datasets = opts.pop("datasets", None) or {}
    opts["dataset_names"] = sorted(datasets)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"hub": hub, "payload": payload, "opts": opts},
        datasets=datasets or None,
        # a (min, max) range makes Ray Train elastic: it starts with what is free and resizes
        scaling_config=ScalingConfig(num_workers=(opts["workers"], opts["max_workers"])
                                     if opts.get("max_workers", opts["workers"]) > opts["workers"]
                                     else opts["workers"],
                                     use_gpu=bool(opts.get("gpus_per_worker")),
                                     resources_per_worker=dict(
                                         resources, **({"GPU": opts["gpus_per_worker"]}
                                                       if opts.get("gpus_per_worker") else {}))),
        run_config=RunConfig(
            name=opts["run_id"], storage_path=opts["storage"],
            failure_config=FailureConfig(max_failures=opts.get("max_failures", 0)),
            # restarts are possible: note what was lost, and restart on the nodes that remain
            callbacks=[node_loss_watch(hub)] if opts.get("max_failures") else None,
            checkpoint_config=CheckpointConfig(
                num_to_keep=opts.get("keep_checkpoints") or None,
                checkpoint_score_attribute=metric, checkpoint_score_order=mode)
            if metric else CheckpointConfig(num_to_keep=opts.get("keep_checkpoints") or None)),
    )
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - reported to the kernel
            box["error"] = exc

    started = time.time()
    thread = threading.Thread(target=fit, daemon=True, name="lepton-train-fit")
    thread.start()
    latest: dict[str, Any] = {}     # rank 0's latest metrics (the record of a failed run)
    while True:
        done = not thread.is_alive()
        for rank, event in ray.get(hub.drain.remote(0.0 if done else 0.2)):
            if rank == 0 and event[0] == "train":
                for point in event[1].get("points") or ():
                    latest.update(point[2])
            folder.handle(rank, event)
        batch = emitter.drain(0.0)
        if batch:
            yield batch
        if done:
            break
    folder.finish()
    rank0, stopped, attempts = ray.get(hub.outcome.remote())
    refused = ray.get(hub.refusal.remote())
    run = dict(_checkpoint_paths(box.get("result"), metric, mode), attempts=attempts,
               stopped=stopped)
    elastic = ray.get(hub.summary.remote())
    if elastic["failures"] or len(elastic["world"]) > 1:
        # beside the metrics, as the kernel puts the ranks' throughput (see RunRecord.metrics)
        run["metrics"] = dict(run.get("metrics") or latest, elastic=elastic)
    if "error" in box:
        result = _first_failure(box["error"])
    elif refused:
        result = {"status": "error", "rank": refused[0], "error": {
            "ename": "LeptonUsageError", "evalue": refused[1],
            "traceback": [f"LeptonUsageError: {refused[1]}\n"]}}
    elif stopped:
        result = {"status": "stopped", "message": stopped}
    else:
        result = dict(rank0 or {"status": "error", "error": {
            "ename": "RuntimeError", "evalue": "rank 0 finished without a result",
            "traceback": []}})
        result["rank"] = 0
    result["run"] = run
    result["elapsed"] = time.time() - started
    tail = emitter.drain(0.0)
    tail.append(("done", result))
    yield tail
