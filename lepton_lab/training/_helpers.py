"""The helpers behind :mod:`lepton_lab.training` (no IPython; runs on the ranks)."""

from __future__ import annotations

import base64
import io
import math
import sys
import time
from typing import Any

_HISTORY: dict[str, list[tuple[float, float]]] = {}
_LAST_PLOT = [0.0]
_PLOT_ID = "lepton-train-curve"


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


def prepare_model(model, *, find_unused_parameters: bool = False):
    """Move ``model`` to this rank's device and wrap it in DDP when there are several ranks.

    With one rank the model is returned unwrapped: DDP over one process only adds overhead.
    """
    import torch

    model = model.to(device())
    if world_size() > 1:
        # DDP all-reduces gradients during backward; NCCL on GPUs, gloo on CPUs (set up by
        # the warm group), so the same cell runs on a laptop and on a GPU cluster.
        ids = [0] if device().type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    return model


def shard(data: Any) -> Any:
    """This rank's contiguous share of an array, tensor or sequence (rank r of W gets the
    r-th of W nearly equal slices; every item belongs to exactly one rank)."""
    n, w, r = len(data), world_size(), rank()
    start, stop = n * r // w, n * (r + 1) // w
    return data[start:stop]


def prepare_loader(dataset: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   drop_last: bool = False, **kwargs: Any):
    """A DataLoader over this rank's part of ``dataset`` (a DistributedSampler when there are
    several ranks; call ``loader.sampler.set_epoch(epoch)`` each epoch to reshuffle)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    if isinstance(dataset, tuple) and all(isinstance(t, torch.Tensor) for t in dataset):
        dataset = TensorDataset(*dataset)
    if world_size() > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      **kwargs)


def report(step: float | None = None, *, plot_every: float = 1.0, **metrics: float) -> None:
    """Record metrics for this step. On rank 0 a live curve is updated in the cell (at most
    every ``plot_every`` seconds); on any rank a non-finite value prints a warning."""
    step = float(len(next(iter(_HISTORY.values()), [])) if step is None else step)
    for name, value in metrics.items():
        value = float(value)
        if not math.isfinite(value):
            print(f"lepton: WARNING rank {rank()}: {name} is {value} at step {step:g}",
                  file=sys.stderr)
        _HISTORY.setdefault(name, []).append((step, value))
    if is_main() and time.monotonic() - _LAST_PLOT[0] >= plot_every:
        _LAST_PLOT[0] = time.monotonic()
        _show_curve()


def history() -> dict[str, list[tuple[float, float]]]:
    """Every reported metric on this rank: name -> [(step, value), ...]."""
    return {k: list(v) for k, v in _HISTORY.items()}


def reset() -> None:
    _HISTORY.clear()
    _LAST_PLOT[0] = 0.0


def _show_curve() -> None:
    from ..remote._executor import current_emitter

    emitter = current_emitter()
    if emitter is None or not _HISTORY:
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.6))
    ax = fig.add_subplot()
    for name, points in _HISTORY.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("step")
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)

    last = ", ".join(f"{k}={v[-1][1]:.4g}" for k, v in _HISTORY.items())
    shown = getattr(emitter, "lepton_curve_shown", False)  # first plot of this cell: new
    emitter.display({"image/png": base64.b64encode(buf.getvalue()).decode(),
                     "text/plain": f"<training curve: {last}>"},
                    display_id=_PLOT_ID, update=shown, raw=True)
    emitter.lepton_curve_shown = True
