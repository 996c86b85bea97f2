"""The helpers behind :mod:`lepton_lab.training` (no IPython; they run on the ranks).

One process is one rank, so the training context is a module-level :class:`_Run`: it is set
up by ``%%lepton train`` / ``%%lepton tune`` (mode, checkpoint cadence, resume source) and
is plain "interactive" in a warm group or a local process.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections import deque
from typing import Any, Iterator

from ..remote._executor import at_cell_end, current_emitter

#: Seconds between two ``train`` events from one rank (the kernel redraws at most this often).
EMIT_INTERVAL = 0.25
#: A gradient norm this many times the median of the recent ones counts as exploding.
GRAD_EXPLOSION = 50.0
#: GPU memory in use above this fraction of the device is worth a warning.
GPU_MEMORY_WARN = 0.95
CHECKPOINT_FILE = "lepton_state.pt"


class TrainingStopped(Exception):
    """Raised on every rank when ``--stop-on-nan`` sees a non-finite loss."""


class _Run:
    def __init__(self, mode: str = "interactive", **opts: Any):
        self.mode = mode
        self.checkpoint_every = int(opts.get("checkpoint_every") or 1)
        self.stop_on_nan = bool(opts.get("stop_on_nan"))
        self.bf16 = bool(opts.get("bf16"))
        self.attempt = int(opts.get("attempt") or 1)
        self.strategy = opts.get("strategy") or "ddp"         # prepare_model's default
        self.fsdp_min_params = opts.get("fsdp_min_params")
        self.cpu_offload = bool(opts.get("cpu_offload"))
        self.privacy: dict[str, float] | None = opts.get("privacy")  # --dp-epsilon & co
        self.private: Any = None                      # make_private's state (._privacy)
        self.resume: Any = opts.get("resume")         # checkpoint dict for transfer learning
        self.epochs: int | None = None
        self.epoch: int | None = None
        self.steps_per_epoch: int | None = None
        self.step_in_epoch = 0
        self.step = 0.0
        self.points: list[list[Any]] = []
        self.samples = 0
        self.last_emit = time.monotonic()
        self.warnings: list[str] = []
        self.warned: set[str] = set()
        self.model: Any = None
        self.optimizers: list[Any] = []               # from epochs(): counted in memory_use()
        self.last_mem_report = 0.0
        self.grad_norms: deque[float] = deque(maxlen=50)
        self.last_grad_check = 0.0
        self.last_mem_check = 0.0
        self.latest: dict[str, float] = {}


_RUN = _Run()
_HISTORY: dict[str, list[tuple[float, float]]] = {}


def configure(mode: str, **opts: Any) -> None:
    """Set this process's training context (called by the train and tune wrappers)."""
    global _RUN
    _RUN = _Run(mode, **opts)


# -- who am I ---------------------------------------------------------------------------------
def _dist():
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """This rank's index (0 outside a group)."""
    d = _dist()
    return d.get_rank() if d else 0


def world_size() -> int:
    """Number of ranks (1 outside a group)."""
    d = _dist()
    return d.get_world_size() if d else 1


def is_main() -> bool:
    return rank() == 0


def device():
    """This rank's device: its GPU when the rank has one (Ray makes it cuda:0), else the CPU."""
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


# -- model and data ---------------------------------------------------------------------------
def prepare_model(model, *, strategy: str | None = None, find_unused_parameters: bool = False,
                  shard_modules: Any = None, min_params: int | None = None,
                  cpu_offload: bool | None = None, mixed_precision: bool | None = None):
    """Put ``model`` on this rank's device and spread it over the ranks.

    ``strategy`` (default: the run's ``--strategy``, else ``"ddp"``):

    - ``"ddp"``: every rank holds the whole model; gradients are all-reduced in backward.
    - ``"fsdp"``: parameters, gradients and optimizer state are sharded over the ranks
      (PyTorch FSDP2), for models too big for one device. Each submodule of at least
      ``min_params`` parameters (``--fsdp-min-params``, default 100000) is one unit, or the
      ``shard_modules`` you list (e.g. ``model.blocks``); ``cpu_offload`` keeps the shards in
      CPU memory; ``mixed_precision`` (default: on a GPU) computes in bf16. Create the
      optimizer *after* this call, from the returned model's parameters.

    With ``--dp-epsilon`` a DDP model goes into Opacus's DPDDP instead (see
    :func:`make_private`). With one rank the model is returned unwrapped (either strategy over
    one process only adds overhead), unless FSDP offloads it to CPU memory. The model is also
    watched for exploding gradients (see :func:`report`).
    """
    import torch

    strategy = strategy or _RUN.strategy
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy={strategy!r}: use 'ddp' or 'fsdp'")
    offload = _RUN.cpu_offload if cpu_offload is None else cpu_offload
    # FSDP on one rank only pays with CPU offload: the shards then live in CPU memory and
    # one device trains a model bigger than itself
    if strategy == "fsdp" and _dist() is not None and (world_size() > 1 or offload):
        from ._fsdp import shard_model

        model = shard_model(model, device=device(), rank=rank(), modules=shard_modules,
                            min_params=min_params or _RUN.fsdp_min_params, cpu_offload=offload,
                            mixed_precision=mixed_precision)
    else:
        model = model.to(device())
    if world_size() > 1 and strategy == "ddp" and _RUN.privacy:
        # DP-SGD must average the gradients *after* clipping each sample's gradient and adding
        # the noise, which Opacus's optimizer does (make_private); DDP's all-reduce during
        # backward would only be wasted traffic. DPDDP just gives every rank rank 0's weights.
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        model = DPDDP(model)
    elif world_size() > 1 and strategy == "ddp":
        # DDP all-reduces gradients during backward; NCCL on GPUs, gloo on CPUs (set up by
        # the warm group or Ray Train), so the same cell runs on a laptop and on a GPU cluster.
        ids = [0] if device().type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    _RUN.model = model
    return model


def full_model(model):
    """The whole trained model as a plain CPU module, for the notebook or the registry.

    For an FSDP model this gathers the shards: call it on every rank; rank 0 gets the module,
    the others ``None``. A DDP model gives its inner module. :func:`epochs` does this by
    itself after the last epoch, so a model trained inside it comes back whole anyway."""
    from ._fsdp import full_model as gather

    return gather(model)


def memory_use(*optimizers: Any) -> dict[str, int]:
    """This rank's bytes of parameters, gradients and optimizer state (its shards only, with
    FSDP), and its peak resident memory (and peak CUDA memory on a GPU). The optimizers are
    those given to :func:`epochs`, or ``optimizers``."""
    import resource

    run = _RUN
    out = {"params": 0, "grads": 0, "optim": 0,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if run.model is not None:
        for p in run.model.parameters():
            out["params"] += _local_bytes(p)
            if p.grad is not None:
                out["grads"] += _local_bytes(p.grad)
    for opt in optimizers or run.optimizers:
        for state in opt.state.values():
            out["optim"] += sum(_local_bytes(t) for t in state.values() if hasattr(t, "numel"))
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak"] = int(torch.cuda.max_memory_allocated())
    return out


def _local_bytes(t: Any) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t      # a DTensor: this rank's shard
    return t.numel() * t.element_size()


def shard(data: Any) -> Any:
    """This rank's contiguous share of an array, tensor or sequence (rank r of W gets the
    r-th of W nearly equal slices; every item belongs to exactly one rank)."""
    n, w, r = len(data), world_size(), rank()
    start, stop = n * r // w, n * (r + 1) // w
    return data[start:stop]


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(first, dict):
        first = next(iter(first.values()), None)
    try:
        return len(first)
    except TypeError:
        return 1


def _loader_class():
    from torch.utils.data import DataLoader, DistributedSampler

    class Loader(DataLoader):
        """A DataLoader that counts samples for the live throughput and reshuffles each epoch
        of :func:`epochs` by itself."""

        def __iter__(self) -> Iterator[Any]:
            run = _RUN
            run.steps_per_epoch = len(self)
            if isinstance(self.sampler, DistributedSampler) and run.epoch is not None:
                self.sampler.set_epoch(run.epoch)
            for batch in super().__iter__():
                run.samples += _batch_len(batch)
                run.step_in_epoch += 1
                yield batch

    return Loader


def prepare_loader(dataset: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   drop_last: bool = False, **kwargs: Any):
    """A DataLoader over this rank's part of ``dataset`` (a DistributedSampler when there are
    several ranks). Inside :func:`epochs` it reshuffles every epoch by itself; otherwise call
    ``loader.sampler.set_epoch(epoch)``. A tuple of tensors is accepted as a dataset.

    With ``--dp-epsilon`` this stays a plain loader (evaluation loaders must see every sample
    once); :func:`make_private` turns the training loader into a Poisson-sampled one."""
    import torch
    from torch.utils.data import DistributedSampler, TensorDataset

    if isinstance(dataset, tuple) and all(isinstance(t, torch.Tensor) for t in dataset):
        dataset = TensorDataset(*dataset)
    loader_cls = _loader_class()
    if world_size() > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        return loader_cls(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          **kwargs)
    return loader_cls(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      **kwargs)


def autocast(enabled: bool | None = None):
    """bf16 autocast on a GPU (``%%lepton train --bf16`` turns it on); a no-op on the CPU.

    bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling::

        with lepton.training.autocast():
            loss = loss_fn(model(x), y)
    """
    import torch

    on = _RUN.bf16 if enabled is None else enabled
    if on and torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- metrics and early warnings ---------------------------------------------------------------
def report(step: float | None = None, *, samples: int | None = None,
           plot_every: float | None = None, **metrics: float) -> None:
    """Record metrics for this step; the launching cell shows them live.

    On every rank: throughput (samples counted by :func:`prepare_loader`, or ``samples=``),
    and early warnings: a non-finite metric, an exploding gradient norm of the model given to
    :func:`prepare_model`, GPU memory close to full. With ``--stop-on-nan`` a non-finite loss
    stops every rank together. ``plot_every`` (seconds) overrides how often the cell redraws.
    """
    run = _RUN
    run.step = float(run.step + 1 if step is None else step)
    if samples is not None:
        run.samples += int(samples)
    values = {name: float(value) for name, value in metrics.items()}
    for name, value in values.items():
        _HISTORY.setdefault(name, []).append((run.step, value))
        if not math.isfinite(value):
            _warn(f"{name} is {value} at step {run.step:g}", key=f"nonfinite:{name}")
    run.latest.update(values)
    run.points.append([run.step, _epoch_position(), values])
    now = time.monotonic()
    if now - run.last_grad_check >= 1.0 and run.model is not None:
        run.last_grad_check = now
        _check_gradients(run)
    if now - run.last_mem_check >= 5.0:
        run.last_mem_check = now
        _check_gpu_memory()
    if run.stop_on_nan:
        bad = [n for n, v in values.items() if "loss" in n.lower() and not math.isfinite(v)]
        if _any_rank(bool(bad)):
            _emit(force=True)
            raise TrainingStopped(
                f"training stopped at step {run.step:g}: "
                + (f"{bad[0]} is {values[bad[0]]}" if bad else "another rank's loss is not finite")
                + " (--stop-on-nan)")
    if run.mode == "tune" and run.epoch is None:
        # outside epochs() every report is a Tune iteration; inside, each epoch is one
        from ray import tune

        tune.report(dict(values, step=run.step))
    interval = EMIT_INTERVAL if plot_every is None else plot_every
    if now - run.last_emit >= interval:
        _emit()


def _epoch_position() -> float | None:
    run = _RUN
    if run.epoch is None:
        return None
    if run.steps_per_epoch:
        return run.epoch + min(run.step_in_epoch / run.steps_per_epoch, 1.0)
    return float(run.epoch)


def _warn(text: str, key: str | None = None) -> None:
    key = key or text
    if key in _RUN.warned:
        return
    _RUN.warned.add(key)
    _RUN.warnings.append(text)
    if current_emitter() is None:  # in a cell the kernel shows it, once, from the report
        print(f"lepton: WARNING rank {rank()}: {text}", file=sys.stderr)
    else:
        _emit(force=True)


def _check_gradients(run: _Run) -> None:
    import torch

    # this rank's part only: a norm over FSDP's sharded gradients would be a collective, and
    # ranks check on their own clocks
    grads = [g.to_local() if hasattr(g, "to_local") else g
             for g in (p.grad for p in run.model.parameters()) if g is not None]
    if not grads:
        return
    norm = float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])))
    past = list(run.grad_norms)
    run.grad_norms.append(norm)
    if not math.isfinite(norm):
        _warn(f"gradient norm is {norm} at step {run.step:g}", key="grad:nonfinite")
    elif len(past) >= 5:
        median = statistics.median(past)
        if median > 0 and norm > GRAD_EXPLOSION * median:
            _warn(f"gradient norm exploded to {norm:.3g} at step {run.step:g} (recent median "
                  f"{median:.3g}); lower the learning rate or clip gradients", key="grad:explode")


def _check_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    try:
        free, total = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001 - no context yet on this device
        return
    used = 1.0 - free / total
    if used >= GPU_MEMORY_WARN:
        _warn(f"GPU memory is {used:.0%} full ({(total - free) / 2**30:.1f} of "
              f"{total / 2**30:.1f} GiB); a larger batch will run out of memory",
              key="gpu-memory")


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a tiny all-reduce; every rank must call it)."""
    d = _dist()
    if d is None:
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0],
                     device=device() if d.get_backend() == "nccl" else "cpu")
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return bool(t.item() > 0)


def _emit(force: bool = False) -> None:
    """Send what this rank reported since the last event to the launching cell."""
    run = _RUN
    now = time.monotonic()
    emitter = current_emitter()
    if emitter is None or (not force and not run.points and not run.samples
                           and not run.warnings):
        run.last_emit = now
        return
    memory = None
    if now - run.last_mem_report >= 1.0 or force:
        run.last_mem_report = now
        memory = memory_use()
    payload = {"rank": rank(), "world": world_size(), "attempt": run.attempt, "memory": memory,
               "epochs": run.epochs, "steps_per_epoch": run.steps_per_epoch,
               "points": run.points, "samples": run.samples,
               "seconds": now - run.last_emit, "warnings": run.warnings}
    run.points, run.samples, run.warnings = [], 0, []
    run.last_emit = now
    emitter.emit(("train", payload))


def flush() -> None:
    """Send whatever is still buffered (the cell wrappers call this when a cell ends)."""
    if _RUN.points or _RUN.samples or _RUN.warnings:
        _emit(force=True)


at_cell_end(flush)


def history() -> dict[str, list[tuple[float, float]]]:
    """Every reported metric on this rank: name -> [(step, value), ...]."""
    return {k: list(v) for k, v in _HISTORY.items()}


def reset() -> None:
    """Forget the history and the training context (a fresh interactive run)."""
    _HISTORY.clear()
    configure("interactive")
