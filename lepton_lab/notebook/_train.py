"""``%%lepton train`` / ``%%lepton tune`` flags and ``%lepton runs``: thin adapters to
:mod:`lepton_lab.training` (parsing and printing only)."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

from ..errors import LeptonUsageError
from ._parsing import UsageParser as _Parser
from ._parsing import names as _names
from ._parsing import number as _number
from ._parsing import positive_int as _positive_int
from ._parsing import worker_range as _worker_range

TRAIN_EXAMPLES = """examples:
  %%lepton train --workers 2 --max-failures 1
  %%lepton train --workers 4 --gpus-per-worker 1 --bf16 --checkpoint-every 2
  %%lepton train --resume-from 1123-ab12cd34 --metric val_acc --mode max
  %%lepton train --workers 2 --detach --name nightly    (then: %lepton attach nightly)
  %%lepton train --workers 2 --strategy fsdp            (shards parameters, gradients and
                                                         optimizer state over the ranks)
  %%lepton train --workers 2-3 --max-failures 2         (elastic: goes on with 2 if a node
                                                         is lost, grows back to 3)
  %%lepton train --workers 2 --dp-epsilon 3             (differential privacy, Opacus; the
                                                         cell calls lepton.training.make_private)
"""

TUNE_EXAMPLES = """examples (the cell declares `search_space`; the rest reads `config[...]`):
  %%lepton tune --samples 8 --scheduler asha --metric val_acc --mode max
  search_space = {"lr": tune.loguniform(1e-4, 1e-1), "width": tune.choice([16, 32, 64])}
  ...
"""


@functools.lru_cache(maxsize=1)
def train_parser():
    p = _Parser(prog="%%lepton train", add_help=False, allow_abbrev=False,
                description="Run this cell as the per-worker loop of a Ray Train job "
                            "(DDP or FSDP; fault tolerant, elastic; checkpoints to storage).",
                epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=_worker_range, default=(1, 1), metavar="N|MIN-MAX",
                   help="training workers (ranks); default 1. MIN-MAX is elastic: the run "
                        "starts with what is free (at least MIN), goes on with fewer after a "
                        "lost node (needs --max-failures) and grows back up to MAX")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp",
                   help="ddp: every rank holds the whole model (default). fsdp: parameters, "
                        "gradients and optimizer state are sharded over the ranks (PyTorch "
                        "FSDP2), for models too big for one device; checkpoints are sharded "
                        "and resume on any number of ranks")
    p.add_argument("--fsdp-min-params", type=_positive_int, default=None, metavar="N",
                   help="with fsdp: shard each submodule of at least N parameters as its own "
                        "unit (default 100000); prepare_model(..., shard_modules=[...]) picks "
                        "them by hand")
    p.add_argument("--cpu-offload", action="store_true",
                   help="with fsdp: keep the sharded parameters and optimizer state in CPU "
                        "memory between uses (saves GPU memory, costs speed)")
    p.add_argument("--dp-epsilon", type=_number, metavar="E",
                   help="differential privacy (Opacus): train to this privacy budget; the "
                        "cell calls lepton.training.make_private(model, optimizer, loader, "
                        "epochs=N). Not with --strategy fsdp (Opacus does not support it)")
    p.add_argument("--dp-delta", type=_number, default=None, metavar="D",
                   help="with --dp-epsilon: the delta of (epsilon, delta)-DP; default 1e-5, "
                        "keep it below 1 / (number of training samples)")
    p.add_argument("--max-grad-norm", type=_number, default=None, metavar="C",
                   help="with --dp-epsilon: clip each sample's gradient to this norm; "
                        "default 1.0")
    p.add_argument("--gpus-per-worker", type=_number, default=0.0, metavar="G",
                   help="GPUs per worker (NCCL between GPUs, gloo on CPUs); default 0")
    p.add_argument("--cpus-per-worker", type=_number, default=1.0, metavar="C",
                   help="CPUs per worker; default 1")
    p.add_argument("--max-failures", type=int, default=0, metavar="F",
                   help="restart the workers from the latest checkpoint up to F times")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="K",
                   help="with lepton.training.epochs(): checkpoint every K epochs (and the last)")
    p.add_argument("--keep-checkpoints", type=_positive_int, metavar="N",
                   help="keep only the N best (or latest) checkpoints")
    p.add_argument("--storage", metavar="PATH|URL",
                   help="where checkpoints go (default ~/.lepton/runs; shared storage or a "
                        "URL for multi-node clusters)")
    p.add_argument("--resume-from", metavar="RUN|PATH",
                   help="start from the weights of an earlier training run or a checkpoint "
                        "file/directory (transfer learning)")
    p.add_argument("--metric", metavar="NAME", help="metric that picks the best checkpoint")
    p.add_argument("--mode", choices=["min", "max"], default="min",
                   help="whether --metric is better low or high; default min")
    p.add_argument("--stop-on-nan", action="store_true",
                   help="stop every rank when a reported loss is NaN or infinite")
    p.add_argument("--bf16", action="store_true",
                   help="turn on bf16 autocast in lepton.training.autocast() (GPU only)")
    p.add_argument("--timeout", type=_number, metavar="SECONDS",
                   help="stop the training after this many seconds")
    p.add_argument("--name", metavar="NAME", help="a name for the job and the training run")
    p.add_argument("--detach", action="store_true",
                   help="run on after the cell returns (and after a kernel restart); "
                        "`%%lepton attach JOB` pulls the model back")
    p.add_argument("--out", type=_names, metavar="NAMES",
                   help="only pull these names back from rank 0, comma-separated")
    p.add_argument("--no-pull", action="store_true", help="pull nothing back")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the workers (repeatable; no secrets)")
    p.add_argument("--all-ranks", action="store_true",
                   help="show every rank's output in full, labelled")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return p


@functools.lru_cache(maxsize=1)
def tune_parser():
    p = _Parser(prog="%%lepton tune", add_help=False, allow_abbrev=False,
                description="Search hyperparameters: run this cell as a Ray Tune trainable "
                            "over the `search_space` it declares.",
                epilog=TUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=_positive_int, default=4, metavar="N",
                   help="trials to run; default 4")
    p.add_argument("--scheduler", choices=["asha", "pbt", "fifo"], default="asha",
                   help="asha stops poor trials early; pbt mutates the best; default asha")
    p.add_argument("--metric", required=True, metavar="NAME",
                   help="the reported metric to optimise (required)")
    p.add_argument("--mode", choices=["min", "max"], required=True,
                   help="whether the metric is better low or high (required)")
    p.add_argument("--cpus-per-trial", type=_number, default=1.0, metavar="C",
                   help="CPUs per trial; default 1")
    p.add_argument("--gpus-per-trial", type=_number, default=0.0, metavar="G",
                   help="GPUs per trial; default 0")
    p.add_argument("--max-concurrent", type=_positive_int, metavar="N",
                   help="trials running at once (default: as many as fit)")
    p.add_argument("--timeout", type=_number, metavar="SECONDS",
                   help="stop the search after this many seconds")
    p.add_argument("--name", metavar="NAME", help="a name for the job and the run")
    p.add_argument("--storage", metavar="PATH|URL", help="where trial results go")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return p


def parse_train_line(words: list[str]):
    """``%%lepton train`` flags -> a frozen TrainSpec (None for --help)."""
    from ..remote._spec import parse_env
    from ..training._run import TrainSpec

    args = train_parser().parse_args(words)
    if args.help:
        return None
    if args.no_pull and args.out:
        raise LeptonUsageError("--out and --no-pull contradict each other; use one of them")
    if args.dp_epsilon is None and (args.dp_delta is not None
                                    or args.max_grad_norm is not None):
        raise LeptonUsageError("--dp-delta and --max-grad-norm go with --dp-epsilon E; add "
                               "it, or drop them")
    return TrainSpec(workers=args.workers[0], max_workers=args.workers[1],
                     strategy=args.strategy, fsdp_min_params=args.fsdp_min_params,
                     cpu_offload=args.cpu_offload, dp_epsilon=args.dp_epsilon,
                     dp_delta=args.dp_delta, max_grad_norm=args.max_grad_norm,
                     cpus_per_worker=args.cpus_per_worker,
                     gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures,
                     checkpoint_every=args.checkpoint_every,
                     keep_checkpoints=args.keep_checkpoints, storage=args.storage,
                     resume_from=args.resume_from, metric=args.metric, mode=args.mode,
                     stop_on_nan=args.stop_on_nan, bf16=args.bf16, name=args.name,
                     timeout=args.timeout, out=args.out, pull=not args.no_pull,
                     env=parse_env(args.env), all_ranks=args.all_ranks, detach=args.detach)


def parse_tune_line(words: list[str]):
    from ..training._tune import TuneSpec

    args = tune_parser().parse_args(words)
    if args.help:
        return None
    return TuneSpec(samples=args.samples, scheduler=args.scheduler, metric=args.metric,
                    mode=args.mode, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                    timeout=args.timeout, name=args.name, storage=args.storage)


def format_runs(runs: list[Any]) -> str:
    if not runs:
        return "no training runs recorded yet; `%%lepton train` makes one"
    lines = [f"{'id':<14} {'kind':<6} {'status':<10} {'name':<16} {'age':>7}  metrics"]
    for r in runs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in list((r.metrics or {}).items())[:4]
                            if isinstance(v, (int, float)))
        lines.append(f"{r.id:<14} {r.kind:<6} {r.status:<10} {(r.name or ''):<16} "
                     f"{time.time() - r.created:>6.0f}s  {metrics}")
    return "\n".join(lines)


def format_run(r: Any) -> str:
    out = [f"training run {r.id} ({r.kind}, {r.status})" + (f" '{r.name}'" if r.name else "")]
    if r.metrics:
        out.append("metrics: " + ", ".join(f"{k}={v}" for k, v in r.metrics.items()))
    out.append(f"best checkpoint: {r.best_checkpoint or '-'}")
    out.append(f"last checkpoint: {r.last_checkpoint or '-'}")
    out.append(f"history: {len(r.history)} points; storage: {r.storage or '-'}")
    if r.error:
        out.append(f"error: {r.error}")
    out.append(f"resume from it: %%lepton train --resume-from {r.id}")
    return "\n".join(out)
