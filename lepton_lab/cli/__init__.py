"""``lepton``: the command-line tool (same core as the magics).

    lepton run templates/quickstart.ipynb [-p NAME VALUE ...] [-o OUT.ipynb]
    lepton sweep NB -p lr 0.1 0.01 -p epochs 2 4 [--parallel K]
    lepton runs [RUN] | lepton compare RUN RUN | lepton reproduce RUN
    lepton status
    lepton jobs [--limit N]
    lepton logs JOB | lepton cancel JOB
    lepton up [--idle-stop MIN] [--tls] | lepton down | lepton cluster start | stop | status
    lepton tls join-command [--host H] | lepton tls env | lepton tls status
    lepton dashboard [--port P] [--run ID]
"""

from __future__ import annotations

import argparse
import sys

from ..errors import LeptonError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lepton", description="Lepton Lab: notebook cells on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    from ._pipeline import add_parsers

    add_parsers(sub)
    sub.add_parser("status", help="nodes, resources, running jobs, dashboard link")
    j = sub.add_parser("jobs", help="recorded jobs, newest first")
    j.add_argument("--limit", type=int, default=20)
    for name, text in (("logs", "a job's text output"), ("cancel", "cancel a running job")):
        sub.add_parser(name, help=text).add_argument("job")
    c = sub.add_parser("cluster", help="the embedded local Ray cluster")
    c.add_argument("action", choices=["start", "stop", "status"])
    up = sub.add_parser("up", help="start (or find) the embedded local Ray cluster and keep it "
                                   "for every kernel until `lepton down`")
    up.add_argument("--idle-stop", type=float, metavar="MIN", default=None,
                    help="stop it after MIN minutes without a running or new job (default: "
                         "LEPTON_IDLE_STOP_MINUTES, else never)")
    up.add_argument("--tls", action="store_true", default=None,
                    help="Ray's TLS mode: encrypted, certificate-checked traffic between the "
                         "cluster's processes, nodes and kernels (default: LEPTON_TLS)")
    sub.add_parser("down", help="stop the embedded local Ray cluster")
    from . import _dashboard as dashboard_cli
    from . import _tls as tls_cli

    dashboard_cli.add_parser(sub)
    tls_cli.add_parser(sub)
    return p


def _stopped(done: dict) -> str:
    how = (f"{done['forced']} process(es) killed after the grace time" if done["forced"]
           else "gracefully")
    return f"stopped in {done['seconds']:.1f} s ({how})"


def _cluster(args: argparse.Namespace) -> int:
    from .. import cluster

    action = {"up": "start", "down": "stop"}.get(args.command) or args.action
    if action == "start":
        state = cluster.start_embedded(tls=getattr(args, "tls", None))
        cluster.warm_up()          # the first cell of the next kernel then waits for less
        print(f"embedded Ray at {state['address']}{' (TLS)' if state.get('tls') else ''}; "
              f"dashboard {state['dashboard_url']}")
        minutes = getattr(args, "idle_stop", None)
        minutes = cluster.get_config().idle_stop_minutes if minutes is None else minutes
        if minutes and minutes > 0:
            from ._idle import spawn

            spawn(minutes, int(state["pid"]))
            print(f"it stops after {minutes:g} min without a running or new job")
    elif action == "stop":
        done = cluster.stop_embedded()
        print(_stopped(done) if done else "no embedded cluster was running")
    else:
        print(_cluster_line())
    return 0


def _cluster_line() -> str:
    """The embedded cluster's state without connecting to it (or starting it)."""
    import time

    from .. import cluster

    state = cluster.embedded_state()
    if state:
        return (f"embedded Ray at {state['address']} (pid {state['pid']}, up "
                f"{(time.time() - state['started']) / 60:.0f} min); dashboard "
                f"{state.get('dashboard_url') or 'off'}; log {state['log']}")
    starting = cluster.embedded_starting()
    if starting:
        from ..remote._status import starting_text

        return starting_text(starting)
    return "no embedded cluster is running (`lepton up` starts one)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from ._pipeline import dispatch

        code = dispatch(args)
        if code is not None:
            return code
        if args.command == "dashboard":
            from . import _dashboard as dashboard_cli

            return dashboard_cli.main(args)
        if args.command == "tls":
            from . import _tls as tls_cli

            return tls_cli.main(args)
        if args.command == "status":
            from ..remote._status import cluster_status, format_text

            print(format_text(cluster_status()))
        elif args.command == "jobs":
            from ..remote._jobs import refresh
            from ..store import get_store

            for job in get_store().list_jobs(limit=args.limit):
                job = refresh(job) if job.status == "running" else job
                print(f"{job.id:<14} {job.kind:<10} {job.status:<10} {job.name or '':<16} "
                      f"{job.user or ''}")
        elif args.command == "logs":
            from ..remote._jobs import logs

            job, text = logs(args.job)
            print(text, end="")
        elif args.command == "cancel":
            from ..remote._jobs import cancel

            print(f"{args.job}: {cancel(args.job).status}")
        elif args.command in ("cluster", "up", "down"):
            return _cluster(args)
    except LeptonError as exc:
        print(f"lepton: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lepton: interrupted", file=sys.stderr)
        return 130
    return 0

