"""``lepton``: the command-line tool (same core as the magics).

    lepton run templates/quickstart.ipynb [-p NAME VALUE ...] [-o OUT.ipynb]
    lepton status
    lepton jobs [--limit N]
    lepton logs JOB | lepton cancel JOB
    lepton cluster start | stop
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import LeptonError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lepton", description="Lepton Lab: notebook cells on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a notebook headlessly (papermill) on the cluster")
    r.add_argument("notebook", type=Path)
    r.add_argument("-o", "--output", type=Path,
                   help="executed notebook (default: $LEPTON_HOME/runs/<name>-<time>.ipynb)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="notebook parameter (YAML value)")
    r.add_argument("-k", "--kernel", help="kernel name (default: the notebook's)")
    r.add_argument("--timeout", type=float, default=1800, help="seconds per cell (default 1800)")
    sub.add_parser("status", help="nodes, resources, running jobs, dashboard link")
    j = sub.add_parser("jobs", help="recorded jobs, newest first")
    j.add_argument("--limit", type=int, default=20)
    for name, text in (("logs", "a job's text output"), ("cancel", "cancel a running job")):
        sub.add_parser(name, help=text).add_argument("job")
    c = sub.add_parser("cluster", help="the embedded local Ray cluster")
    c.add_argument("action", choices=["start", "stop"])
    return p


def _run(args: argparse.Namespace) -> int:
    import papermill as pm
    import yaml

    from .config import get_config

    nb = args.notebook
    if not nb.exists():
        raise LeptonError(f"no notebook at {nb}")
    out = args.output
    if out is None:
        runs = get_config().home_path / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        out = runs / f"{nb.stem}-{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
    params = {k: yaml.safe_load(v) for k, v in args.parameter}
    start = time.monotonic()
    try:
        pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name=args.kernel,
                            execution_timeout=args.timeout, progress_bar=False,
                            log_output=True, cwd=str(nb.parent))
    except pm.PapermillExecutionError as exc:
        print(f"lepton run: {nb} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
              file=sys.stderr)
        print(f"lepton run: the partly executed notebook is {out}", file=sys.stderr)
        return 1
    print(f"lepton run: {nb} finished in {time.monotonic() - start:.1f} s")
    print(f"lepton run: executed notebook: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            from ._status import cluster_status, format_text

            print(format_text(cluster_status()))
        elif args.command == "jobs":
            from .remote._jobs import refresh
            from .store import get_store

            for job in get_store().list_jobs(limit=args.limit):
                job = refresh(job) if job.status == "running" else job
                print(f"{job.id:<14} {job.kind:<10} {job.status:<10} {job.name or '':<16} "
                      f"{job.user or ''}")
        elif args.command == "logs":
            from .remote._jobs import logs

            job, text = logs(args.job)
            print(text, end="")
        elif args.command == "cancel":
            from .remote._jobs import cancel

            print(f"{args.job}: {cancel(args.job).status}")
        elif args.command == "cluster":
            from . import cluster

            if args.action == "start":
                state = cluster.start_embedded()
                print(f"embedded Ray at {state['address']}; dashboard {state['dashboard_url']}")
            else:
                print("stopped" if cluster.stop_embedded() else "no embedded cluster was running")
    except LeptonError as exc:
        print(f"lepton: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lepton: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
