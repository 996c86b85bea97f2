"""``%%lepton`` and ``%lepton``: a thin adapter from IPython to the core.

The flags are declared once (argparse, with help); the parsed line becomes a frozen
:class:`~lepton_lab.remote.CellSpec` on the first line and the raw argparse result goes no
deeper. Every user mistake becomes one ``UsageError`` line; a remote failure shows the remote
traceback with the cell's own line numbers.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import threading
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ..errors import CellSyntaxError, LeptonError, LeptonUsageError
from ..remote._spec import CellSpec, parse_env
from ._doc import DOC
from ._parsing import UsageParser as _Parser
from ._parsing import names as _names
from ._parsing import number as _number
from ._parsing import positive_int as _positive_int
from ._parsing import size as _size

CELL_EXAMPLES = """examples:
  %%lepton --cpus 2 --timeout 60
  %%lepton --gpus 1 --memory 16GiB --out model,history
  %%lepton --workers 4 --all-ranks
  %%lepton --detach --name sweep-1 --env OMP_NUM_THREADS=1
"""


@functools.lru_cache(maxsize=1)
def cell_parser() -> _Parser:
    """The ``%%lepton`` flags, declared once (also the source of ``%%lepton --help``)."""
    p = _Parser(prog="%%lepton", add_help=False, allow_abbrev=False,
                description="Run this cell on the Ray cluster.", epilog=CELL_EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpus", type=_number, metavar="N", help="CPUs per task or rank (default 1)")
    p.add_argument("--gpus", type=_number, default=0.0, metavar="N",
                   help="GPUs per task or rank (fractions share a GPU); default 0")
    p.add_argument("--memory", type=_size, metavar="SIZE",
                   help="memory to reserve per task or rank, e.g. 4GiB, 512MB")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run on the kernel's warm group of N SPMD ranks (state is kept between "
                        "cells; torch.distributed is initialised)")
    p.add_argument("--timeout", type=_number, metavar="SECONDS",
                   help="cancel the remote work after this many seconds")
    p.add_argument("--name", metavar="NAME", help="a name for the job (for jobs/attach/logs)")
    p.add_argument("--detach", action="store_true",
                   help="return at once; the job outlives the kernel (`%%lepton attach NAME`)")
    p.add_argument("--out", type=_names, metavar="NAMES",
                   help="only pull these names back, comma-separated (default: all assigned)")
    p.add_argument("--no-pull", action="store_true",
                   help="pull nothing back; results stay on the cluster")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable for the cell (repeatable; no secrets)")
    p.add_argument("--all-ranks", action="store_true",
                   help="with --workers: show every rank's output in full, labelled")
    p.add_argument("--cache", action="store_true",
                   help="reuse the stored result of an earlier successful run of this cell when "
                        "its source and the values it reads are unchanged (pipelines)")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return p


def _split(line: str) -> list[str]:
    try:
        # stripped as IPython strips a magic's line (Unicode spaces too, e.g. U+00A0), so a
        # line reads the same here as in the shell
        return shlex.split(line.strip())
    except ValueError as exc:
        raise LeptonUsageError(f"cannot parse the magic line ({exc}); check the quotes") from None


def parse_cell_line(line: str) -> CellSpec | None:
    """``%%lepton`` flags -> a frozen CellSpec (None when only --help was asked for)."""
    args = cell_parser().parse_args(_split(line))
    if args.help:
        return None
    if args.no_pull and args.out:
        raise LeptonUsageError("--out and --no-pull contradict each other; use one of them")
    return CellSpec(cpus=args.cpus, gpus=args.gpus, memory=args.memory, workers=args.workers,
                    timeout=args.timeout, name=args.name, detach=args.detach,
                    out=args.out, pull=not args.no_pull, env=parse_env(args.env),
                    all_ranks=args.all_ranks, cache=args.cache)


@functools.lru_cache(maxsize=1)
def line_parser() -> _Parser:
    p = _Parser(prog="%lepton", add_help=False, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub._parser_class = lambda **kw: _Parser(allow_abbrev=False, **kw)  # noqa: SLF001
    sub.add_parser("status", add_help=False)
    c = sub.add_parser("connect", add_help=False)
    c.add_argument("address", help="host:port, ray://host:10001, or 'local'")
    sub.add_parser("disconnect", add_help=False)
    j = sub.add_parser("jobs", add_help=False)
    j.add_argument("--all", action="store_true")
    j.add_argument("--limit", type=_positive_int, default=20)
    j.add_argument("--status")
    for name in ("attach", "logs", "cancel"):
        sub.add_parser(name, add_help=False).add_argument("job")
    g = sub.add_parser("group", add_help=False)
    g.add_argument("action", nargs="?", default="info",
                   choices=["info", "stop", "restart", "resize"])
    g.add_argument("workers", nargs="?", type=_positive_int, help="ranks, for resize")
    a = sub.add_parser("audit", add_help=False)
    a.add_argument("--limit", type=_positive_int, default=20)
    a.add_argument("--job")
    r = sub.add_parser("runs", add_help=False)
    r.add_argument("run", nargs="?", help="a run id, prefix or name: show it in full")
    r.add_argument("--limit", type=_positive_int, default=20)
    sub.add_parser("stop-cluster", add_help=False)
    sub.add_parser("help", add_help=False)
    return p


def parse_line(line: str) -> argparse.Namespace:
    words = _split(line)
    if not words or words[0] in ("-h", "--help"):
        return argparse.Namespace(command="help")
    if words[0].startswith("-"):
        raise LeptonUsageError("%lepton needs a command (status, connect, jobs, ...); to run a "
                               "cell remotely use %%lepton with the flags on its first line")
    return line_parser().parse_args(words)


def _clean(exc: BaseException) -> BaseException:
    exc.__traceback__ = None
    exc.__context__ = None
    return exc


@magics_class
class LeptonMagics(Magics):
    """The ``%lepton`` line magic and ``%%lepton`` cell magic."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        self._followers: list[threading.Event] = []
        self._announced: str | None = None

    @line_cell_magic
    def lepton(self, line: str, cell: str | None = None) -> Any:
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except SyntaxError as exc:
            raise _clean(CellSyntaxError(exc)) from None
        except CellSyntaxError as exc:
            raise _clean(exc) from None
        except LeptonUsageError as exc:
            raise UsageError(str(exc)) from None
        except LeptonError as exc:
            # one line, no Python traceback (RemoteError renders the remote traceback)
            raise _clean(exc) from None

    # -- cells ------------------------------------------------------------------------------
    def _cell(self, line: str, cell: str) -> Any:
        words = _split(line)
        if words and words[0] in ("train", "tune"):
            return self._training_cell(words[0], words[1:], cell)
        spec = parse_cell_line(line)
        if spec is None:
            print(cell_parser().format_help())
            return None
        if not cell.strip():
            raise LeptonUsageError("the %%lepton cell is empty; put the code to run below the "
                                   "magic line")
        from .. import cluster
        from ..remote import run_cell
        from ..remote._analysis import analyze

        analyze(cell)  # a syntax error is reported before any cluster is touched
        # the kernel's warm cell worker stays; run_cell gives it back if this cell needs more
        self._announce(cluster, keep_warm=True)
        ns = self.shell.user_ns
        if spec.detach:
            return self._detach(cell, ns, spec)
        from ._display import CellSink

        if spec.cache:
            from ..pipeline._cache import run_cached

            flags = {"workers": spec.workers, "out": spec.out, "pull": spec.pull,
                     "env": spec.env}
            run_cached(cell, ns, flags, CellSink(),
                       lambda sink: run_cell(cell, ns, spec, sink, origin=self._origin()))
            return None
        run_cell(cell, ns, spec, CellSink(), origin=self._origin())
        return None

    def _training_cell(self, kind: str, words: list[str], cell: str) -> Any:
        from . import _train as mt

        spec = mt.parse_train_line(words) if kind == "train" else mt.parse_tune_line(words)
        if spec is None:
            print((mt.train_parser() if kind == "train" else mt.tune_parser()).format_help())
            return None
        if not cell.strip():
            raise LeptonUsageError(f"the %%lepton {kind} cell is empty; put the training code "
                                   "below the magic line")
        from .. import cluster
        from ..remote._analysis import analyze
        from ._display import CellSink

        analyze(cell)
        self._announce(cluster)
        if kind == "train" and spec.detach:
            return self._detach(cell, self.shell.user_ns, spec)
        if kind == "train":
            from ..training._run import run_train

            run_train(cell, self.shell.user_ns, spec, CellSink(), origin=self._origin())
        else:
            from ..training._tune import run_tune

            run_tune(cell, self.shell.user_ns, spec, CellSink(), origin=self._origin())
        return None

    def _announce(self, cluster: Any, keep_warm: bool = False) -> None:
        conn = cluster.ensure_connected(keep_warm=keep_warm)
        if self._announced != conn.address:
            self._announced = conn.address
            what = {"embedded": "embedded local Ray"}.get(conn.kind, "Ray cluster")
            dash = f"; dashboard {conn.dashboard_url}" if conn.dashboard_url else ""
            print(f"lepton: using the {what} at {conn.address}{dash}")

    def _origin(self) -> str:
        # jupyter_server tells a kernel the path of its notebook (the sidebar opens it)
        notebook = os.environ.get("JPY_SESSION_NAME")
        if notebook:
            return notebook
        kernel = getattr(self.shell, "kernel", None)
        session = getattr(getattr(kernel, "session", None), "session", None)
        return f"kernel:{session}" if session else "ipython"

    def _detach(self, cell: str, ns: dict, spec: Any) -> None:
        from IPython.display import display

        from ..remote._jobs import follow, submit_detached

        if isinstance(spec, CellSpec):
            job_id = submit_detached(cell, ns, spec, origin=self._origin())
        else:  # a TrainSpec
            from ..training._run import submit_train_detached

            job_id = submit_train_detached(cell, ns, spec, origin=self._origin())
        print(f"lepton: job {job_id} detached{f' ({spec.name})' if spec.name else ''}: "
              f"`%lepton attach {spec.name or job_id}` pulls its variables, "
              f"`%lepton logs {job_id}`, `%lepton cancel {job_id}`")
        try:
            from ._display import OutputWidgetSink

            sink = OutputWidgetSink()
        except RuntimeError:
            return None
        display(sink.widget)
        stop = threading.Event()
        self._followers.append(stop)

        def run() -> None:
            try:
                info = follow(job_id, sink, stop=stop)
                if info.get("result") is not None:
                    sink.status(f"job {job_id} {info['state']}; `%lepton attach "
                                f"{spec.name or job_id}` pulls its variables")
            except Exception as exc:  # noqa: BLE001 - shown in the widget, never lost
                sink.status(f"stopped following job {job_id}: {exc}")

        threading.Thread(target=run, daemon=True, name=f"lepton-follow-{job_id}").start()
        return None

    def stop_followers(self) -> None:
        for ev in self._followers:
            ev.set()

    # -- line commands ----------------------------------------------------------------------
    def _line(self, line: str) -> Any:
        from . import _models

        words = _split(line)
        if words and words[0] in _models.COMMANDS:
            return _models.run(words[0], words[1:], self.shell, self._origin())
        args = parse_line(line)
        cmd = args.command
        if cmd == "help":
            print(DOC)
            return None
        from .. import cluster

        if cmd == "connect":
            conn = cluster.connect(args.address)
            if cluster.get_config().check_versions:
                cluster.check_versions(conn)
            self._announced = None
            self._announce(cluster)
            return None
        if cmd == "disconnect":
            cluster.disconnect()
            self._announced = None
            print("lepton: disconnected (the cluster keeps running)")
            return None
        if cmd == "stop-cluster":
            from ..remote._group import stop_group

            stop_group()
            stopped = cluster.stop_embedded()
            self._announced = None
            print("lepton: embedded cluster stopped" if stopped else
                  "lepton: no embedded cluster was running")
            return None
        return getattr(self, f"_cmd_{cmd.replace('-', '_')}")(args)

    def _cmd_status(self, args: argparse.Namespace) -> None:
        from IPython.display import display

        from ..remote._status import cluster_status, format_text
        from ._status import format_html

        st = cluster_status()
        display({"text/plain": format_text(st), "text/html": format_html(st)}, raw=True)

    def _cmd_jobs(self, args: argparse.Namespace) -> None:
        from ..remote._jobs import refresh
        from ..store import get_store

        jobs = get_store().list_jobs(limit=args.limit, status=args.status)
        jobs = [refresh(j) if j.status == "running" else j for j in jobs]
        if not args.all:
            jobs = [j for j in jobs if j.kind != "cell" or j.status != "succeeded"] or jobs
        if not jobs:
            print("no jobs recorded yet")
            return None
        import time

        print(f"{'id':<14} {'kind':<10} {'status':<10} {'name':<16} {'user':<10} {'age':>8}")
        for j in jobs:
            age = time.time() - j.created
            print(f"{j.id:<14} {j.kind:<10} {j.status:<10} {(j.name or ''):<16} "
                  f"{(j.user or ''):<10} {age:>7.0f}s")
        return None

    def _cmd_attach(self, args: argparse.Namespace) -> None:
        from ..remote._jobs import attach
        from ._display import CellSink

        job = attach(args.job, self.shell.user_ns, CellSink())
        print(f"lepton: job {job.id} {job.status}")

    def _cmd_logs(self, args: argparse.Namespace) -> None:
        from ..remote._jobs import logs

        job, text = logs(args.job)
        print(f"--- job {job.id} ({job.status}) ---")
        print(text, end="" if text.endswith("\n") or not text else "\n")

    def _cmd_cancel(self, args: argparse.Namespace) -> None:
        from ..remote._jobs import cancel

        job = cancel(args.job)
        print(f"lepton: job {job.id} {job.status}")

    def _cmd_group(self, args: argparse.Namespace) -> None:
        from ..remote._group import group_info, restart_group, stop_group

        if args.action == "stop":
            print("lepton: warm group stopped" if stop_group() else "lepton: no warm group")
            return None
        if args.action == "resize" and not args.workers:
            raise LeptonUsageError("`%lepton group resize N` needs the number of ranks")
        if args.action in ("restart", "resize"):
            from ._display import CellSink

            info = restart_group(CellSink(), args.workers if args.action == "resize" else None)
        else:
            info = group_info()
        if info is None:
            print("lepton: no warm group yet; `%%lepton --workers N` starts one")
            return None
        print(f"warm group: {info['world']} rank(s), {info['cpus']:g} CPU / {info['gpus']:g} GPU"
              f" each, torch.distributed backend {info['backend']}")
        for r in info["ranks"]:
            if r.get("dead"):
                on = f" (on {r['node']})" if r.get("node") else ""
                print(f"  rank {r['rank']}: DEAD or stuck (not answering){on}; "
                      "`%lepton group restart` starts a fresh group")
            else:
                node = f" node {r['node_id'][:8]}" if r.get("node_id") else ""
                print(f"  rank {r['rank']}: {r['host']}{node} pid {r['pid']} gpus {r['gpus'] or '-'} "
                      f"{'busy' if r['busy'] else 'idle'}, {r['cells']} cell(s), "
                      f"{r['variables']} variable(s)")
        return None

    def _cmd_runs(self, args: argparse.Namespace) -> None:
        from ..store import get_store
        from ._train import format_run, format_runs

        store = get_store()
        if args.run:
            print(format_run(store.get_run(args.run)))
        else:
            print(format_runs(store.list_runs(limit=args.limit)))

    def _cmd_audit(self, args: argparse.Namespace) -> None:
        import time

        from ..store import get_store

        entries = get_store().audit_entries(job_id=args.job, limit=args.limit)
        for e in entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"]))
            print(f"{when}  {e['user'] or '':<10} {e['action']:<8} {e['job_id'] or '':<14} "
                  f"{e['outcome'] or '':<10} {(e['source_hash'] or '')[:12]}  "
                  f"{e['cluster'] or ''}")
        if not entries:
            print("the audit log is empty")


LeptonMagics.lepton.__doc__ = DOC + "\nCell flags (%%lepton)\n---------------------\n" + \
    cell_parser().format_help()

_REGISTERED: dict[int, LeptonMagics] = {}


def _warm_imports() -> None:
    try:  # `import ray` takes seconds; do it while the user types the first cell
        import ray  # noqa: F401
    except Exception:  # noqa: BLE001 - the first cell reports a broken install properly
        pass


def register(ipython: Any) -> None:
    if getattr(ipython, "kernel", None) is not None:  # a notebook kernel, not a plain shell
        from .. import cluster

        # `import ray` (seconds) overlaps with the embedded cluster's start, and both with
        # the user writing the first cell; with an address set, only `import ray`
        threading.Thread(target=_warm_imports, daemon=True, name="lepton-warm-imports").start()
        cluster.start_in_background()
    magics = LeptonMagics(ipython)
    ipython.register_magics(magics)
    _REGISTERED[id(ipython)] = magics
    from ..remote import _progress

    if _progress.LOCAL_HOOK is None:
        from ._display import local_progress_hook

        _progress.LOCAL_HOOK = local_progress_hook()


def unregister(ipython: Any) -> None:
    magics = _REGISTERED.pop(id(ipython), None)
    if magics is not None:
        magics.stop_followers()
