"""The training benchmark's workload: the model, the training loop and the data.

The same model, data and batch size for every contender of ``bench/train.py``; the runners,
the measurement and the report live there (and in ``_train_report``).
"""

from __future__ import annotations

from typing import Any

BATCH = 64
SIZE = 32              # 8x8 digits upsampled to SIZE x SIZE
TINY = 256             # samples in the start-up (e) cell

# The training loop, as a notebook user would type it in a cell. Every contender runs this
# very source: exec'd by train.py for (a) and the baselines, sent as the cell body for (b),
# (c), (d).
LOOP_SRC = '''\
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class BenchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def bench_train(X, Y, epochs, batch_size, warmup=1, helpers=False, seed=0):
    """Train a fresh BenchNet for warmup + epochs epochs; time the last ``epochs``.

    Returns one dict per rank (all ranks, gathered after the timing) with samples/s."""
    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    sampler = None
    if helpers:  # Lepton's training helpers (as in a %%lepton train cell)
        from lepton_lab.training import epochs as lepton_epochs
        from lepton_lab.training import prepare_loader, prepare_model, report
        model = prepare_model(BenchNet())
        loader = prepare_loader((X, Y), batch_size=batch_size, seed=seed)
        epoch_iter = lepton_epochs(warmup + epochs)
    else:  # plain torch
        report = None
        model = BenchNet()
        data = TensorDataset(X, Y)
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
            sampler = DistributedSampler(data, seed=seed)
            loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
        else:
            loader = DataLoader(data, batch_size=batch_size, shuffle=True)
        epoch_iter = range(warmup + epochs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    samples, t0 = 0, None
    for epoch in epoch_iter:
        if epoch == warmup:
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if epoch >= warmup:
                samples += len(x)
            if report is not None:
                report(loss=loss.item())
    seconds = time.perf_counter() - t0
    res = {"rank": rank, "world": world, "samples": samples, "seconds": seconds,
           "sps": samples / seconds, "loss": float(loss.item()), "threads": torch.get_num_threads(),
           "pid": os.getpid(), "total_s": time.perf_counter() - start,
           "t_end": time.perf_counter()}  # CLOCK_MONOTONIC: comparable across processes
    if world > 1:
        out = [None] * world
        dist.all_gather_object(out, res)
        return out
    return [res]
'''


def cell_body(call: str) -> str:
    """A cell: the loop's source, one call whose result comes back, nothing else pulled."""
    return f"{LOOP_SRC}\nbench_result = {call}\ndel BenchNet, bench_train\n"


def loop_namespace() -> dict[str, Any]:
    g: dict[str, Any] = {"__name__": "bench_loop"}
    exec(compile(LOOP_SRC, "<bench-loop>", "exec"), g)
    return g


def load_data() -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).contiguous()
    return x, torch.tensor(d.target)
