"""The kernel side of ``%%lepton train``: validate, ship, submit, watch, record the run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cluster import ensure_connected
from ..config import get_config
from ..errors import CellTimeout, LeptonError, LeptonUsageError
from ..registry import register_run_models
from ..remote._analysis import analyze
from ..remote._guard import drive
from ..remote._runner import (
    CellOutcome,
    Recorder,
    apply_outcome,
    build_payload,
    check_feasible,
    finish_outcome,
    record_submission,
    ship_values,
)
from ..remote._sink import LogTee, Sink
from ..remote._spec import CellSpec
from ..store import get_store

MODES = ("min", "max")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainSpec:
    """What a ``%%lepton train`` cell asks for (built by the magic, the REST API or code)."""

    workers: int = 1                    # the minimum with an elastic range
    max_workers: int | None = None      # > workers: elastic (Ray Train resizes in between)
    strategy: str = "ddp"               # "ddp" or "fsdp"
    fsdp_min_params: int | None = None  # fsdp: a submodule this big is its own shard unit
    cpu_offload: bool = False           # fsdp: sharded state lives in CPU memory
    dp_epsilon: float | None = None     # differential privacy budget (Opacus)
    dp_delta: float | None = None
    max_grad_norm: float | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int | None = None
    storage: str | None = None          # a directory or a URL Ray Train accepts (s3://, gs://)
    resume_from: str | None = None      # a training run id/name, or a checkpoint file/directory
    metric: str | None = None           # picks the best checkpoint
    mode: str = "min"
    stop_on_nan: bool = False
    bf16: bool = False
    name: str | None = None
    timeout: float | None = None
    out: tuple[str, ...] | None = None
    pull: bool = True
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    all_ranks: bool = False
    detach: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 1024:
            raise LeptonUsageError(f"--workers {self.workers} must be between 1 and 1024")
        if self.max_workers is not None and not self.workers <= self.max_workers <= 1024:
            raise LeptonUsageError(f"--workers {self.workers}-{self.max_workers}: need "
                                   "MIN <= MAX <= 1024")
        if self.elastic and self.max_failures < 1:
            raise LeptonUsageError(f"--workers {self.workers}-{self.max_workers} is elastic: "
                                   "add --max-failures F (F >= 1) so the run can go on after a "
                                   "lost worker")
        if self.strategy not in STRATEGIES:
            raise LeptonUsageError(f"--strategy {self.strategy!r} must be ddp or fsdp")
        if self.strategy != "fsdp" and (self.cpu_offload or self.fsdp_min_params):
            raise LeptonUsageError("--cpu-offload and --fsdp-min-params go with --strategy "
                                   "fsdp")
        if self.dp_epsilon is not None:
            if self.strategy == "fsdp":
                raise LeptonUsageError("--dp-epsilon does not work with --strategy fsdp "
                                       "(Opacus supports DDP only); use --strategy ddp")
            if not self.dp_epsilon > 0:
                raise LeptonUsageError(f"--dp-epsilon {self.dp_epsilon:g} must be above 0 "
                                       "(typical budgets are 1 to 10)")
            if self.dp_delta is not None and not 0 < self.dp_delta < 1:
                raise LeptonUsageError(f"--dp-delta {self.dp_delta:g} must be between 0 and 1 "
                                       "(typically below 1 / the number of samples)")
            if self.max_grad_norm is not None and not self.max_grad_norm > 0:
                raise LeptonUsageError(f"--max-grad-norm {self.max_grad_norm:g} must be above 0")
        if not 0 <= self.max_failures <= 1000:
            raise LeptonUsageError(f"--max-failures {self.max_failures} must be 0..1000 "
                                   "(-1 for unlimited is not offered: a broken cell would loop)")
        if self.checkpoint_every < 1:
            raise LeptonUsageError(f"--checkpoint-every {self.checkpoint_every} must be at "
                                   "least 1 (epochs)")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise LeptonUsageError("--keep-checkpoints must be at least 1")
        if self.mode not in MODES:
            raise LeptonUsageError(f"--mode {self.mode!r} must be 'min' or 'max'")
        # the rest (cpus, gpus, name, env, out, timeout) is validated by CellSpec's rules
        self.cell_spec()

    @property
    def elastic(self) -> bool:
        return self.max_workers is not None and self.max_workers > self.workers

    @property
    def world(self) -> int:
        """The most ranks the run will have (what it asks Ray Train for)."""
        return self.max_workers or self.workers

    def privacy(self) -> dict[str, float] | None:
        """The differential-privacy settings the ranks get (None: no DP)."""
        if self.dp_epsilon is None:
            return None
        return {"epsilon": self.dp_epsilon, "delta": self.dp_delta or 1e-5,
                "max_grad_norm": self.max_grad_norm or 1.0}

    def cell_spec(self) -> CellSpec:
        """The per-worker request in CellSpec terms (validation, feasibility, payload)."""
        return CellSpec(cpus=self.cpus_per_worker, gpus=self.gpus_per_worker,
                        timeout=self.timeout, name=self.name, out=self.out, pull=self.pull,
                        env=self.env, all_ranks=self.all_ranks)

    def resources(self) -> dict[str, Any]:
        d = self.cell_spec().resources()
        d.update(workers=self.workers, max_failures=self.max_failures)
        if self.elastic:
            d.update(max_workers=self.max_workers)
        return d

    def config(self) -> dict[str, Any]:
        """The run's settings as recorded with it."""
        return {k: v for k, v in self.__dict__.items() if k not in ("env", "out")}


def default_storage() -> str:
    return str(get_config().home_path / "runs")


def prepare_storage(storage: str | None) -> str:
    """Where a run's checkpoints go: a URL as given, else an absolute, existing directory."""
    storage = storage or default_storage()
    if "://" not in storage:
        storage = str(Path(os.path.expanduser(storage)).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    return storage


def _checkpoint_file(path: Path) -> Path:
    from ._helpers import CHECKPOINT_FILE

    return path / CHECKPOINT_FILE if path.is_dir() else path


def resolve_resume(source: str) -> bytes | str:
    """The bytes of the checkpoint ``--resume-from`` names: a file, a checkpoint directory, or
    a recorded training run (its best checkpoint). A sharded (``--strategy fsdp``) checkpoint
    is a directory of every rank's shards: its path is given instead, which the ranks read
    (it must be on storage they reach, as a multi-node run's storage is)."""
    path = Path(os.path.expanduser(source))
    if not path.exists():
        try:
            run = get_store().get_run(source)
        except LeptonUsageError:
            raise LeptonUsageError(
                f"--resume-from {source!r} is neither a checkpoint file or directory nor a "
                "training run; `%lepton runs` lists runs") from None
        where = run.best_checkpoint or run.last_checkpoint
        if not where:
            raise LeptonUsageError(f"training run {run.id} has no checkpoint to resume from; "
                                   "checkpoints come from lepton.training.epochs(...) or "
                                   "save_checkpoint(...)")
        path = Path(where)
    if path.is_dir() and (path / ".metadata").is_file():
        return str(path.resolve())
    file = _checkpoint_file(path)
    try:
        return file.read_bytes()
    except OSError as exc:
        raise LeptonUsageError(f"--resume-from: cannot read {file} ({exc.strerror}); give a "
                               "checkpoint file or a run id") from None


_TASK = None


def _train_task():
    global _TASK
    if _TASK is None:
        import ray

        from ._job import run_train_task

        _TASK = ray.remote(num_cpus=0, max_retries=0)(run_train_task)
    return _TASK


def _keep_module_identity(values: dict[str, Any], namespace: dict[str, Any]) -> None:
    """A trained module whose name already holds a module of the same class is loaded into
    that object (its state dict), so other references in the notebook see the new weights."""
    try:
        import torch
    except ImportError:
        return
    for name, value in list(values.items()):
        old = namespace.get(name)
        if (isinstance(value, torch.nn.Module) and type(old) is type(value)
                and old is not value):
            try:
                old.load_state_dict(value.state_dict())
            except Exception:  # noqa: BLE001 - architecture changed in the cell: replace it
                continue
            values[name] = old


def _ray_datasets(names: Any, namespace: dict[str, Any]) -> dict[str, Any]:
    """The Ray Data datasets among the names a cell reads: Ray Train shards them per rank
    (each rank sees its own ``DataIterator`` under the same name) instead of shipping them."""
    import sys

    data = sys.modules.get("ray.data")
    if data is None:   # nobody made a dataset without importing ray.data first
        return {}
    return {n: namespace[n] for n in names if isinstance(namespace.get(n), data.Dataset)}


def _prepare(body: str, namespace: dict[str, Any], spec: TrainSpec, job_kind: str,
             origin: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Validate, ship the values, record the job and the run: ``(job_id, payload, opts)``."""
    an = analyze(body)
    if spec.dp_epsilon is not None:   # before anything starts: make_private, DP-able modules
        from ._privacy import check_cell

        check_cell(an.source, {n: namespace[n] for n in an.reads if n in namespace})
    conn = ensure_connected()
    if conn.is_client:
        raise LeptonUsageError(
            "%%lepton train needs a direct connection: Ray Client (ray://) cannot stream from "
            "the training workers. Connect with the head's address, e.g. "
            "`%lepton connect HEAD_IP:6379`")
    cell = spec.cell_spec()
    check_feasible(cell, count=spec.workers)
    resume = resolve_resume(spec.resume_from) if spec.resume_from else None
    import ray

    datasets = _ray_datasets(an.reads, namespace)
    values = ship_values(an.reads, namespace, skip=lambda name, _v: name in datasets)
    payload = build_payload(an, cell, values)
    storage = prepare_storage(spec.storage)
    job_id = record_submission(job_kind, body, an, spec, conn.address, origin)
    store = get_store()
    store.create_run(job_id, job_id=job_id, kind="train", name=spec.name,
                     config=spec.config(), storage=storage)
    cfg = get_config()
    opts = {"workers": spec.workers, "max_workers": spec.world, "strategy": spec.strategy,
            "fsdp_min_params": spec.fsdp_min_params, "cpu_offload": spec.cpu_offload,
            "privacy": spec.privacy(), "cpus_per_worker": spec.cpus_per_worker,
            "gpus_per_worker": spec.gpus_per_worker, "max_failures": spec.max_failures,
            "checkpoint_every": spec.checkpoint_every, "keep_checkpoints": spec.keep_checkpoints,
            "storage": storage, "run_id": job_id, "metric": spec.metric, "mode": spec.mode,
            "stop_on_nan": spec.stop_on_nan, "bf16": spec.bf16, "all_ranks": spec.all_ranks,
            "tail_lines": cfg.rank_tail_lines, "datasets": datasets,
            # a detached run must not depend on an object the kernel owns: it goes inline
            "resume": resume if resume is None or job_kind == "detached" else ray.put(resume)}
    return job_id, payload, opts


def submit_train_detached(body: str, namespace: dict[str, Any], spec: TrainSpec, *,
                          origin: str | None = None) -> str:
    """Start a training run that outlives the cell; returns its job id at once.

    A detached keeper actor drives it; ``%lepton attach`` follows the live view and pulls
    the model, and the training run is finished in the store by whoever sees it end.
    """
    from ..remote._jobs import start_keeper

    job_id, payload, opts = _prepare(body, namespace, spec, "detached", origin)
    start_keeper(job_id, payload, {}, driver=(_train_task, opts))
    return job_id


def run_train(body: str, namespace: dict[str, Any], spec: TrainSpec, sink: Sink, *,
              origin: str | None = None) -> CellOutcome:
    """Run ``body`` as the per-worker loop of a Ray Train ``TorchTrainer`` run.

    Output streams into ``sink`` (rank 0 live, others tailed), ``train`` reports feed a live
    view, the assigned names come back from rank 0, and the run is recorded in the store.
    """
    job_id, payload, opts = _prepare(body, namespace, spec, "train", origin)
    store = get_store()
    tee = LogTee(sink)
    deadline = time.monotonic() + spec.timeout if spec.timeout else None

    def record(status: str, error: str | None = None, run: dict[str, Any] | None = None) -> None:
        run = run or {}
        monitor = tee.monitor
        metrics = run.get("metrics") or (dict(monitor.latest) if monitor else None)
        if monitor is not None and monitor.rates():
            # samples/s of each rank over its last window (the dashboards' per-rank bars)
            metrics = {**(metrics or {}),
                       "throughput": {str(r): v for r, v in sorted(monitor.rates().items())}}
        if monitor is not None and monitor.memory:
            # each rank's parameter/gradient/optimizer bytes (its shards with FSDP), peak RSS
            metrics = {**(metrics or {}),
                       "memory": {str(r): m for r, m in sorted(monitor.memory.items())}}
        store.update_run(job_id, status=status, error=error,
                         history=monitor.history if monitor else None,
                         metrics=metrics,
                         best_checkpoint=run.get("best_checkpoint"),
                         last_checkpoint=run.get("last_checkpoint"))

    def stopped(exc: BaseException) -> None:
        record("cancelled", "interrupted" if isinstance(exc, KeyboardInterrupt) else "timeout")
        if isinstance(exc, KeyboardInterrupt):
            tee.status("interrupted: every rank was stopped and its resources freed")

    with Recorder(job_id, tee):
        try:
            res = drive(_train_task(), f"lepton-train:{job_id}", payload, opts, tee, deadline,
                        stopped)
        except CellTimeout:
            raise CellTimeout(f"the training ran past --timeout {spec.timeout:g} s; every "
                              "rank was stopped and its resources freed") from None
        run = res.get("run") or {}
        if res.get("status") == "stopped":
            record("failed", res.get("message"), run)
            raise LeptonError(f"{res.get('message')}; checkpoints so far are in training run "
                              f"{job_id} (`%lepton runs {job_id}`)")
        rank = res.get("rank")
        error = res.get("error") or {}
        if res.get("status") == "error" and error.get("ename") == "LeptonUsageError":
            # a rank refused the cell (make_private: a layer Opacus cannot train, a budget no
            # noise reaches): one line, like the same mistake caught in the kernel
            record("failed", error.get("evalue"), run)
            raise LeptonUsageError(f"{error.get('evalue')} (found on rank {rank}; the run "
                                   "stopped)")
        try:
            outcome = finish_outcome(job_id, {rank: res}, lambda r: "the training job"
                                     if r is None else f"rank {r}")
        except BaseException as exc:
            record("failed", str(exc)[:2000] or type(exc).__name__, run)
            raise
        record("succeeded", None, run)
        _keep_module_identity(outcome.values, namespace)
        apply_outcome(outcome, namespace, tee, "the ranks")
        restarts = max(int(run.get("attempts") or 1) - 1, 0)
        note = f", {restarts} restart(s) after worker failures" if restarts else ""
        where = run.get("best_checkpoint") or "no checkpoint (use lepton.training.epochs)"
        tee.status(f"training run {job_id} done in {res.get('elapsed', 0):.1f} s{note}; "
                   f"best checkpoint: {where}")
        register_run_models(outcome.values, namespace, run_id=job_id, run_name=spec.name,
                            checkpoint=run.get("best_checkpoint"), say=tee.status)
        return outcome
