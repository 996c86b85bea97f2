"""Differential-privacy benchmark (issue 14): what ``make_private`` costs in accuracy and time
next to the same loop without DP, all in one run::

    .venv/bin/python bench/privacy.py [--quick] [--json OUT]

The workload is ``bench/train.py``'s: the 2-conv CNN (``BenchNet``) on sklearn's digits
upsampled to 32x32, batch 64, SGD lr 0.05 momentum 0.9, ``torch.set_num_threads(1)``; a fixed
split (seed 0) of 1437 training and 360 test images. Every contender is the same cell-style
loop with Lepton's helpers in this process (``prepare_model``, ``prepare_loader``,
``make_private``, ``epochs``; no Ray), configured as a ``%%lepton train`` rank would be
(``_helpers.configure``): without DP, and with ``--dp-epsilon`` 8, 3 and 1 (delta 1e-5,
``--max-grad-norm`` 1.0), 10 epochs each. Rounds run every contender once, in a rotating
order, so background load hits all alike; DP accuracy varies with the noise, hence 3 rounds.

Measured: test accuracy after the last epoch; seconds per epoch (the training loop only,
median over epochs and rounds) and its ratio to no DP; ``make_private`` (the noise search)
and the accountant's per-epoch check and report in ``epochs()``; the epsilon spent as
reported (``dp_epsilon``) and the noise multiplier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _harness import format_facts, machine_facts, phase, table  # noqa: E402
from _train_cases import BATCH, SIZE, load_data, loop_namespace  # noqa: E402

CONFIGS: dict[str, float | None] = {"no DP": None, "eps 8": 8.0, "eps 3": 3.0, "eps 1": 1.0}
DELTA, CLIP, LR, TRAIN = 1e-5, 1.0, 0.05, 1437


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_once(data: dict[str, Any], epsilon: float | None, epochs: int, seed: int
               ) -> dict[str, Any]:
    """One training run as a rank would do it; returns accuracy and timings."""
    import torch

    import lepton_lab.training as lt
    from lepton_lab.training import _helpers

    lt.reset()
    _helpers.configure("interactive", privacy=None if epsilon is None else
                       {"epsilon": epsilon, "delta": DELTA, "max_grad_norm": CLIP})
    torch.manual_seed(seed)
    model = lt.prepare_model(data["Net"]())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loader = lt.prepare_loader((data["X"], data["Y"]), batch_size=BATCH, seed=seed)
    t0 = time.perf_counter()
    model, opt, loader = lt.make_private(model, opt, loader, epochs=epochs)
    setup = time.perf_counter() - t0
    train_s: list[float] = []
    start = time.perf_counter()
    for _ in lt.epochs(epochs, model=model, optimizer=opt):
        t = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        train_s.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    with torch.no_grad():
        model.eval()
        acc = (model(data["Xt"]).argmax(1) == data["Yt"]).float().mean().item()
    spent = lt.history().get("dp_epsilon", [(0, None)])[-1][1]
    return {"acc": acc, "epoch_s": train_s, "make_private_s": setup,
            "accounting_s_per_epoch": (total - sum(train_s)) / epochs, "epsilon": spent,
            "noise_multiplier": getattr(opt, "noise_multiplier", None)}


def run(epochs: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    import torch

    torch.set_num_threads(1)
    X, Y = load_data()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    data = {"X": X[perm[:TRAIN]], "Y": Y[perm[:TRAIN]], "Xt": X[perm[TRAIN:]],
            "Yt": Y[perm[TRAIN:]], "Net": loop_namespace()["BenchNet"]}
    names = list(CONFIGS)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            with phase(f"{name} round {r + 1}"):
                res = train_once(data, CONFIGS[name], epochs, seed=r)
            out[name].append(res)
            log(f"round {r + 1}/{rounds} {name:6}: acc {res['acc']:.3f}, "
                f"{statistics.median(res['epoch_s']):.2f} s/epoch, epsilon {res['epsilon']}")
    return out


def report(res: dict[str, Any]) -> str:
    m = res["m"]
    base = statistics.median(s for r in m["no DP"] for s in r["epoch_s"])
    rows = []
    for name, runs in m.items():
        accs = [r["acc"] for r in runs]
        per_epoch = statistics.median(s for r in runs for s in r["epoch_s"])
        eps = [r["epsilon"] for r in runs if r["epsilon"] is not None]
        sigma = [r["noise_multiplier"] for r in runs if r["noise_multiplier"] is not None]
        rows.append([
            name, f"{max(eps):.2f}" if eps else "-", f"{sigma[0]:.2f}" if sigma else "-",
            f"{statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f})",
            f"{per_epoch:.2f}", f"{per_epoch / base:.2f}x",
            f"{statistics.median(r['make_private_s'] for r in runs):.2f}",
            f"{statistics.median(r['accounting_s_per_epoch'] for r in runs):.3f}"])
    cfg = res["config"]
    head = (f"digits CNN, {cfg['epochs']} epochs, batch {BATCH}, {cfg['rounds']} round(s); "
            f"delta {DELTA:g}, max grad norm {CLIP:g}; accuracy: mean (min-max) over rounds")
    return head + "\n\n" + table(rows, [
        "config", "epsilon spent", "noise sigma", "test accuracy", "s/epoch", "vs no DP",
        "make_private s", "accounting s/epoch"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (3 epochs, one round)")
    p.add_argument("--json", metavar="OUT",
                   help="where to write the results (default bench/results/privacy-DATE.json)")
    args = p.parse_args(argv)
    epochs, rounds = (3, 1) if args.quick else (10, 3)
    res: dict[str, Any] = {"machine": machine_facts(), "quick": args.quick,
                           "config": {"epochs": epochs, "rounds": rounds, "batch": BATCH,
                                      "image_size": SIZE, "train": TRAIN, "lr": LR,
                                      "delta": DELTA, "max_grad_norm": CLIP,
                                      "torch_threads": 1, "configs": CONFIGS}}
    res["machine"]["versions"]["opacus"] = _harness._version("opacus")
    log(format_facts(res["machine"]) + f"; opacus {res['machine']['versions']['opacus']}")
    _harness.MONITOR = _harness.CpuMonitor()
    t0 = time.perf_counter()
    res["m"] = run(epochs, rounds)
    _harness.MONITOR.stop()
    res["cpu_by_phase"] = _harness.MONITOR.phases
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    text = report(res)
    foreign = [p["foreign_cores"] for p in res["cpu_by_phase"].values()]
    print(text)
    print(f"\nwhole run: {res['wall_s']:.0f} s; other processes used "
          f"{min(foreign):.2f}-{max(foreign):.2f} cores (median "
          f"{statistics.median(foreign):.2f}) during the runs; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in res['loadavg_end'])}")
    dest = args.json or str(Path(__file__).resolve().parent / "results" /
                            f"privacy-{res['machine']['date']}{'-quick' if args.quick else ''}"
                            ".json")
    Path(dest).write_text(json.dumps(res, indent=1, default=str))
    log(f"results: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
