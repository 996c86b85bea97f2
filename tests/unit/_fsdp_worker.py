"""Rank processes for tests/unit/test_fsdp.py: real torch.distributed (gloo), no Ray.

Each phase writes what it saw to ``out/<phase>-<rank>.json``; the test compares them.
"""

from __future__ import annotations

import json
import os
import sys


def data():
    import torch

    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 32, generator=g)
    w = torch.randn(32, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(512, 1, generator=g)


def make_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU()),
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()),
        torch.nn.Linear(64, 1))


def full_loss(model) -> float:
    import torch

    x, y = data()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), y))


def train(model, opt, steps: int) -> list[float]:
    import torch

    from lepton_lab import training as lt

    x, y = data()
    x, y = lt.shard(x), lt.shard(y)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def run(phase: str, rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    import torch
    import torch.distributed as dist

    from lepton_lab import training as lt
    from lepton_lab.training import _fsdp, _helpers

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    report: dict = {"rank": rank, "world": world}
    try:
        if phase == "save":
            _helpers.configure("interactive", strategy="fsdp", fsdp_min_params=1000)
        else:
            _helpers.configure("interactive", strategy="fsdp", fsdp_min_params=1000,
                               resume=lt.load_checkpoint(ckpt))
        model = lt.prepare_model(make_model())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        report["sharded"] = _fsdp.is_sharded(model)
        report["units"] = sum(1 for m in model.modules() if _fsdp.is_sharded(m))
        if phase == "save":
            report["losses"] = train(model, opt, 40)
            lt.save_checkpoint(epoch=0, path=ckpt, model=model, optimizer=opt)
        else:
            for _ in lt.epochs(1, model=model, optimizer=opt):   # loads the checkpoint
                report["loss_at_resume"] = full_loss(model)
                report["losses"] = train(model, opt, 10)
        report["memory"] = lt.memory_use(opt)
        report["full_loss"] = full_loss(model)
        plain = lt.full_model(model)
        if plain is not None:
            report["plain_type"] = type(plain).__name__
            report["plain_loss"] = full_loss(plain)
            report["plain_sharded"] = _fsdp.is_sharded(plain)
            report["plain_device"] = str(next(plain.parameters()).device)
    finally:
        if world > 1:
            dist.destroy_process_group()
    with open(os.path.join(out, f"{phase}-{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    phase, rank, world, port, out, ckpt = sys.argv[1:]
    run(phase, int(rank), int(world), int(port), out, ckpt)
