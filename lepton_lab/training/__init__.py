"""Training helpers for cells: the warm group (``%%lepton --workers N``), ``%%lepton train``
(Ray Train, fault tolerant) and ``%%lepton tune`` use the same ones::

    %%lepton train --workers 2 --max-failures 1
    from lepton_lab.training import epochs, prepare_loader, prepare_model, report
    model = prepare_model(Net())                       # on this rank's device, in DDP
                                                       # (or sharded: --strategy fsdp)
    loader = prepare_loader((X, Y), batch_size=64)     # each rank gets its own shard
    opt = torch.optim.Adam(model.parameters())
    for epoch in epochs(10, model=model, optimizer=opt):   # checkpoints, resumes after a failure
        for x, y in loader:
            ...
            report(loss=loss.item())                   # live progress, curves and warnings

Differential privacy (``%%lepton train --dp-epsilon 3``, Opacus): one more line before the
loop; without the flag it returns its inputs unchanged, so the same cell runs either way::

    model, opt, loader = make_private(model, opt, loader, epochs=10)   # DP-SGD, 10 epochs

Each epoch then reports ``dp_epsilon`` (the budget spent so far) with the other metrics.
"""

from ._checkpoint import epochs, load_checkpoint, save_checkpoint
from ._helpers import (
    TrainingStopped,
    autocast,
    device,
    full_model,
    history,
    is_main,
    memory_use,
    prepare_loader,
    prepare_model,
    rank,
    report,
    reset,
    shard,
    world_size,
)
from ._privacy import make_private

__all__ = ["TrainingStopped", "autocast", "device", "epochs", "full_model", "history",
           "is_main", "load_checkpoint", "make_private", "memory_use", "prepare_loader",
           "prepare_model", "rank",
           "report", "reset", "save_checkpoint", "shard", "world_size"]
