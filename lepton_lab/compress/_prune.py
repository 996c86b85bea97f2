"""Structured pruning (torch-pruning, dependency-aware) and the fine-tuning that follows it."""

from __future__ import annotations

import copy
from typing import Any, Callable

from ..errors import LeptonUsageError
from ._settings import CompressSettings, Data

Progress = Callable[[str, int, int], None]


def output_layers(model: Any, example: Any) -> list[Any]:
    """The Linear/Conv layers that run last in a forward pass: the classifier (its outputs
    are the model's outputs, so they must never be pruned).

    Found by running ``example`` with forward hooks: the last executed Linear/Conv layer,
    plus any other such layer whose output tensor is (part of) the model's output."""
    import torch
    from torch import nn

    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    order: list[Any] = []
    outs: dict[int, Any] = {}

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        order.append(mod)
        if isinstance(out, torch.Tensor):
            outs[id(out)] = (mod, out)  # the tensor too: its id stays unique

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    found = [order[-1]] if order else []
    flat = out if isinstance(out, (tuple, list)) else [out]
    for t in flat:
        mod = outs.get(id(t), (None,))[0]
        if mod is not None and mod not in found:
            found.append(mod)
    return found


def prune(model: Any, settings: CompressSettings, example: Any,
          progress: Progress | None = None) -> tuple[Any, dict[str, Any]]:
    """A pruned deep copy of ``model`` (``settings.prune`` of the channels of every prunable
    layer removed, by L2 magnitude) and a dict describing what was done.

    The copy is a plain ``nn.Module`` of the same class whose layers are smaller: fewer
    parameters, less compute. ``model`` itself is not touched."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    ignored = output_layers(pruned, example)
    with torch.no_grad():
        before_out = pruned(example)
    before = count_params(pruned)
    if progress:
        progress("prune", 0, 1)
    try:
        pruner = tp.pruner.MetaPruner(
            pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=settings.prune, ignored_layers=ignored, global_pruning=False)
        pruner.step()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise LeptonUsageError(f"torch-pruning could not prune this model ({type(e).__name__}: "
                               f"{msg}); compress it with prune=0") from None
    # torch-pruning leaves no hooks on the module; drop its references anyway.
    del pruner
    with torch.no_grad():
        after_out = pruned(example)
    if _shapes(after_out) != _shapes(before_out):
        raise LeptonUsageError(f"pruning changed the model's output shape from "
                               f"{_shapes(before_out)} to {_shapes(after_out)}; use prune=0 for "
                               "this model")
    after = count_params(pruned)
    if progress:
        progress("prune", 1, 1)
    info = {"prune": settings.prune, "params_before": before, "params_after": after,
            "method": "torch-pruning MetaPruner, group L2 magnitude",
            "kept_outputs": [type(m).__name__ for m in ignored]}
    if after == before:
        info["note"] = "nothing could be pruned: the only Linear/Conv layers give the outputs"
    return pruned, info


def finetune(model: Any, data: Data, settings: CompressSettings, device: str,
             progress: Progress | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``data``: Adam, ``settings.finetune_epochs`` epochs.

    Cross-entropy for integer labels, MSE for float targets. Returns what was done, with the
    mean loss of the last epoch."""
    import torch
    import torch.nn.functional as F

    epochs = settings.finetune_epochs
    if epochs == 0:
        return {"finetune_epochs": 0}
    if data.Y is None:
        return {"finetune_epochs": 0, "finetune": "skipped: the calib data has no labels"}
    g = torch.Generator().manual_seed(settings.seed)
    X, Y = data.X, data.Y
    n, bs = len(X), min(settings.batch_size, len(X))
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = F.cross_entropy if data.classes else F.mse_loss
    last = float("nan")
    try:
        for epoch in range(epochs):
            if progress:
                progress("finetune", epoch, epochs)
            perm = torch.randperm(n, generator=g)
            total, batches = 0.0, 0
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                x, y = X[idx].to(device), Y[idx].to(device)
                opt.zero_grad(set_to_none=True)
                out = model(x)
                if not data.classes and out.shape != y.shape:
                    y = y.reshape(out.shape)
                loss = loss_fn(out, y)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            last = total / max(1, batches)
    except (RuntimeError, ValueError) as e:
        raise LeptonUsageError(f"fine-tuning failed on the calib data ({type(e).__name__}: "
                               f"{str(e).splitlines()[0]}); pass calib=(X, Y) with integer class "
                               "labels or float targets shaped like the model output") from None
    finally:
        model.eval()
        for p in model.parameters():
            p.grad = None
    if progress:
        progress("finetune", epochs, epochs)
    return {"finetune_epochs": epochs, "finetune_loss": last, "lr": settings.lr,
            "batch_size": settings.batch_size}


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _shapes(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return [tuple(t.shape[1:]) for t in out]
    return tuple(out.shape[1:])
