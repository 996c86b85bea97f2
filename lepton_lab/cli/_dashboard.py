"""``lepton dashboard``: serve the Voila dashboards on loopback, token required.

    lepton dashboard                      # runs overview; prints the URL with its token once
    lepton dashboard --run 3f2a9c         # opens that run's page
    lepton dashboard --port 0 --page compression
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..dashboard._launch import DEFAULT_PORT, PAGES, TOKEN_ENV, DashboardSpec, start


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dashboard`` subcommand to ``lepton``'s subparsers."""
    p = subparsers.add_parser(
        "dashboard", help="runs, curves, compression and endpoints in the browser (Voila)",
        description="Serve the Lepton dashboards with Voila on 127.0.0.1. A token is "
                    f"required: a random one, or ${TOKEN_ENV}. Viewers cannot run code.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--run", metavar="ID", help="open this run's page (pipeline or training run)")
    p.add_argument("--page", choices=PAGES, default="runs",
                   help="page to open when no --run is given (default: runs)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for Voila to answer (default 60)")
    return p


def main(args: argparse.Namespace) -> int:
    """Start the dashboard, print its URL (with the token) once, serve until Ctrl-C."""
    spec = DashboardSpec(port=args.port, run=args.run, page="run" if args.run else args.page,
                         timeout=args.timeout)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill PID` stops Voila and its page kernels too, as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        dash = start(spec)
    except BaseException:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        raise
    try:
        url = dash.url(spec.page, run=spec.run) if spec.run else dash.url(spec.page)
        print(f"lepton dashboard: serving on {dash.base_url} (log: {dash.log_path})")
        print(f"lepton dashboard: open {url}", flush=True)
        return dash.proc.wait() or 0
    except KeyboardInterrupt:
        print("lepton dashboard: stopped", file=sys.stderr)
        return 0
    finally:
        dash.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

