"""The pipeline commands of ``lepton`` (run, sweep, runs, compare, reproduce): argparse in,
calls on :mod:`lepton_lab.pipeline` out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import LeptonUsageError

RUN_EXAMPLES = """examples:
  lepton run templates/quickstart.ipynb -p epochs 5 -p lr 0.05
  lepton run train.ipynb --input data/train.csv --seed 7 -o out.ipynb
  lepton run train.ipynb --cluster ray://head:10001"""
SWEEP_EXAMPLES = """examples:
  lepton sweep templates/sweep.ipynb -p lr 0.1 0.01 0.001 -p epochs 2 4 --parallel 2
  lepton sweep train.ipynb -p hidden 32 64 --gpus 1 --metric val_loss --mode min"""


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", help="kernel name (default: the notebook's)")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds any one cell may run (default 1800)")
    p.add_argument("--input", action="append", default=[], metavar="FILE",
                   help="an input file whose SHA-256 the run records (repeatable)")
    p.add_argument("--seed", type=int, help="seed for Python, NumPy and torch (default: a "
                   "fresh one, recorded; a `seed` parameter of the notebook wins)")


def add_parsers(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser("run", help="execute a notebook as a recorded pipeline run (papermill)",
                       epilog=RUN_EXAMPLES, formatter_class=fmt)
    r.add_argument("notebook", type=Path)
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="notebook parameter (a YAML value)")
    r.add_argument("-o", "--output", type=Path,
                   help="executed notebook (default: $LEPTON_HOME/runs/<run>/<name>.ipynb)")
    r.add_argument("--cluster", metavar="ADDRESS",
                   help="Ray cluster for the notebook's %%%%lepton cells (default: RAY_ADDRESS "
                        "or the embedded cluster)")
    r.add_argument("--run-id", help=argparse.SUPPRESS)
    _add_common(r)
    s = sub.add_parser("sweep", help="run a parameter grid as parallel runs on the cluster",
                       epilog=SWEEP_EXAMPLES, formatter_class=fmt)
    s.add_argument("notebook", type=Path)
    s.add_argument("-p", "--parameter", nargs="+", action="append", default=[],
                   metavar="NAME VALUE", help="a parameter and its values: -p lr 0.1 0.01")
    s.add_argument("--parallel", type=int, help="runs at once (default: as many as fit)")
    s.add_argument("--cpus", type=float, default=1.0, help="CPUs per run (default 1)")
    s.add_argument("--gpus", type=float, default=0.0, help="GPUs per run (default 0)")
    s.add_argument("--metric", help="metric that picks the best run (default: the first "
                   "number every run recorded)")
    s.add_argument("--mode", choices=["max", "min"], help="best is the max or min of --metric")
    _add_common(s)
    ls = sub.add_parser("runs", help="list pipeline runs, or show one")
    ls.add_argument("run", nargs="?", help="a run id (prefix) or notebook name: show it")
    ls.add_argument("--status", help="only runs with this status")
    ls.add_argument("--name", help="only runs of this notebook")
    ls.add_argument("--sweep", help="only runs of this sweep")
    ls.add_argument("--limit", type=int, default=30)
    ls.add_argument("--json", action="store_true", help="print JSON")
    c = sub.add_parser("compare", help="differences between two runs")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for metrics")
    c.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for metrics")
    c.add_argument("--json", action="store_true", help="print JSON")
    rp = sub.add_parser("reproduce", help="re-run a run with its parameters and seed, compare")
    rp.add_argument("run")
    rp.add_argument("--rtol", type=float, default=1e-6,
                    help="relative tolerance for metrics (default 1e-6)")
    rp.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    rp.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    rp.add_argument("--run-id", help=argparse.SUPPRESS)


def _age(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _short(d: dict[str, Any], limit: int = 48) -> str:
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _table(runs: list[Any]) -> str:
    lines = [f"{'RUN':<14}{'STATUS':<11}{'NOTEBOOK':<16}{'STARTED':<18}{'SECS':>7}  "
             "PARAMETERS / METRICS"]
    for r in runs:
        secs = f"{r.duration:.1f}" if r.duration is not None else "-"
        lines.append(f"{r.id:<14}{r.status:<11}{r.name[:15]:<16}{_age(r.created):<18}{secs:>7}  "
                     f"{_short(r.parameters)} | {_short(r.metrics)}")
    return "\n".join(lines)


def _show(run: Any) -> str:
    env = run.env or {}
    git = env.get("git") or {}
    lines = [f"run {run.id}: {run.status}" + (f" ({run.error})" if run.error else ""),
             f"  notebook   {run.notebook}", f"  output     {run.output}",
             f"  started    {_age(run.created)}"
             + (f", {run.duration:.1f} s" if run.duration is not None else ""),
             f"  seed       {run.seed}", f"  parameters {json.dumps(run.parameters)}",
             f"  metrics    {json.dumps(run.metrics)}"]
    if run.series:
        lines.append("  series     " + ", ".join(f"{k} ({len(v)} points)"
                                                 for k, v in run.series.items()))
    for label, d in (("tables", run.tables), ("figures", run.figures),
                     ("artifacts", run.artifacts)):
        if d:
            lines.append(f"  {label:<10} " + ", ".join(d))
    lines.append(f"  python     {env.get('python')}  ray {(env.get('ray') or {}).get('version')}"
                 f"  git {git.get('commit', '-')[:10]}{' (dirty)' if git.get('dirty') else ''}")
    gpu = env.get("gpu") or {}
    if gpu:
        lines.append(f"  gpu        {', '.join(g['name'] for g in gpu.get('gpus', []))} "
                     f"driver {gpu.get('driver')} cuda {gpu.get('cuda')}")
    if run.sweep:
        lines.append(f"  sweep      {run.sweep}")
    if run.reproduces:
        lines.append(f"  reproduces {run.reproduces}")
    slow = sorted((c for c in run.cells if c.get("duration") and c.get("index") is not None), key=lambda c: -c["duration"])[:3]
    if slow:
        lines.append("  slowest    " + ", ".join(f"cell {c['index']} {c['duration']:.1f} s"
                                               for c in slow))
    return "\n".join(lines)


def _grid(pairs: list[list[str]]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        if len(pair) < 2:
            raise LeptonUsageError(f"-p {pair[0]} needs values: -p {pair[0]} VALUE [VALUE ...]")
        if pair[0] in grid:
            raise LeptonUsageError(f"-p {pair[0]} is given twice; list all its values once")
        grid[pair[0]] = [_yaml(v) for v in pair[1:]]
    return grid


def dispatch(args: argparse.Namespace) -> int | None:
    """Run a pipeline command; None when ``args.command`` is not one."""
    from .. import pipeline as pl
    from ..store import get_store

    if args.command == "run":
        params = tuple((k, _yaml(v)) for k, v in args.parameter)
        opts = pl.RunOptions(parameters=params, output=args.output, seed=args.seed,
                             inputs=tuple(args.input), kernel=args.kernel,
                             cell_timeout=args.timeout, cluster=args.cluster, run_id=args.run_id)
        try:
            run = pl.run_notebook(args.notebook, opts)
        except pl.PipelineFailed as exc:
            print(f"lepton run: {exc}", file=sys.stderr)
            return 1
        print(f"lepton run: {run.id} succeeded in {run.duration:.1f} s; executed notebook: "
              f"{run.output}")
        if run.metrics:
            print(f"lepton run: metrics {_short(run.metrics, 200)}")
        return 0
    if args.command == "sweep":
        return _sweep(args, pl)
    store = get_store()
    if args.command == "runs":
        if args.run:
            run = store.get_pipeline_run(args.run)
            print(json.dumps(run.to_dict(), indent=1) if args.json else _show(run))
            return 0
        runs = store.list_pipeline_runs(status=args.status, name=args.name, sweep=args.sweep,
                                        limit=args.limit)
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], indent=1))
        else:
            print(_table(runs) if runs else "no pipeline runs yet; `lepton run NB.ipynb` makes one")
        return 0
    if args.command == "compare":
        comp = pl.compare(store.get_pipeline_run(args.a), store.get_pipeline_run(args.b),
                          rtol=args.rtol, atol=args.atol)
        print(json.dumps(comp.to_dict(), indent=1, default=str) if args.json
              else pl.format_comparison(comp))
        return 0
    if args.command == "reproduce":
        try:
            new, comp = pl.reproduce(args.run, rtol=args.rtol, atol=args.atol,
                                     run_id=args.run_id, cell_timeout=args.timeout)
        except pl.PipelineFailed as exc:
            print(f"lepton reproduce: {exc}", file=sys.stderr)
            return 1
        print(pl.format_comparison(comp))
        verdict = "reproduced" if comp.metrics_match else "NOT reproduced"
        print(f"lepton reproduce: {new.id} {verdict} {comp.a} (rtol {args.rtol:g}, "
              f"atol {args.atol:g})")
        return 0 if comp.metrics_match else 1
    return None


def _sweep(args: argparse.Namespace, pl: Any) -> int:
    from tqdm import tqdm

    grid = _grid(args.parameter)
    total = len(pl.expand_grid(grid))
    opts = pl.SweepOptions(parallel=args.parallel, cpus=args.cpus, gpus=args.gpus,
                           seed=args.seed, cell_timeout=args.timeout, kernel=args.kernel,
                           metric=args.metric, mode=args.mode)
    bar = tqdm(total=total, unit="run", desc=f"sweep {args.notebook.name}", file=sys.stderr)

    def progress(done: int, _total: int, run: Any) -> None:
        bar.update(1)
        if run.status != "succeeded":
            bar.write(f"lepton sweep: {run.id} {run.status}: {run.error}", file=sys.stderr)

    try:
        result = pl.run_sweep(args.notebook, grid, opts, inputs=tuple(args.input),
                              progress=progress)
    finally:
        bar.close()
    print(_table(result.runs))
    print(f"lepton sweep: {result.sweep}: {len(result.runs) - len(result.failed)} of "
          f"{len(result.runs)} runs succeeded in {result.elapsed:.1f} s")
    if result.best is not None:
        print(f"lepton sweep: best run {result.best.id} ({result.metric} = "
              f"{result.best.metrics[result.metric]:.6g}, {result.mode}) with "
              f"{_short(result.best.parameters, 200)}")
    return 0 if not result.failed else 1
