"""Training helpers for cells on the warm group (``%%lepton --workers N``).

They make plain PyTorch DDP short to write and work the same with one rank or many::

    %%lepton --workers 2
    from lepton_lab.training import prepare_model, prepare_loader, report
    model = prepare_model(Net())                 # on this rank's device, wrapped in DDP
    loader = prepare_loader(train_set, batch_size=64)   # each rank gets its own shard
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            ...
        report(epoch=epoch, loss=loss.item())    # live curve and NaN warnings in the cell
"""

from ._helpers import (device, history, is_main, prepare_loader, prepare_model, rank, report,
                       reset, shard, world_size)

__all__ = ["device", "history", "is_main", "prepare_loader", "prepare_model", "rank", "report",
           "reset", "shard", "world_size"]
