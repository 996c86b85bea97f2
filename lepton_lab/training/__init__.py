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

__all__ = ["TrainingStopped", "autocast", "device", "epochs", "full_model", "history",
           "is_main", "load_checkpoint", "memory_use", "prepare_loader", "prepare_model", "rank",
           "report", "reset", "save_checkpoint", "shard", "world_size"]
