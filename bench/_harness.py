"""Shared plumbing for the benchmarks: machine facts, interleaved timing, statistics,
watchdogs and process clean-up. No Lepton imports here (the phases import what they time)."""

from __future__ import annotations

import _thread
import contextlib
import datetime
import io
import os
import platform
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

MiB = 1024 * 1024


# -- machine facts ---------------------------------------------------------------------------
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """CPU, memory, OS and the versions that matter, read once at the start of a run."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    return {
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "os": os_name,
        "python": platform.python_version(),
        "versions": {n: _version(n) for n in ("ray", "torch", "numpy", "ipython", "ipykernel",
                                               "ipyparallel", "jupyter_client", "lepton-lab")},
        "gpu": "none",
        "loadavg_start": list(os.getloadavg()),
    }


def format_facts(f: dict[str, Any]) -> str:
    v = f["versions"]
    return "\n".join([
        f"date      {f['date']}",
        f"CPU       {f['cpu_count']} x {f['cpu_model']}",
        f"RAM       {f['mem_gib']} GiB",
        f"OS        {f['os']}",
        f"Python    {f['python']}; Ray {v['ray']}; torch {v['torch']}; numpy {v['numpy']}; "
        f"IPython {v['ipython']}; ipyparallel {v['ipyparallel']}; lepton-lab {v['lepton-lab']}",
        f"GPU       {f['gpu']}",
        f"load avg  {' '.join(f'{x:.2f}' for x in f['loadavg_start'])} (1/5/15 min, at start)",
    ])


# -- statistics and tables -------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without needing numpy here."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)}


def table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table (readable in a terminal too)."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}" if x < 10 else f"{x * 1e3:.0f}"


# -- timing ----------------------------------------------------------------------------------
Contender = tuple[Callable[[], Any] | None, Callable[[Any], Any]]  # (prepare, run(prepared))


def interleaved(contenders: dict[str, Contender], iters: int, warmup: int,
                log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Time each contender ``iters`` times, round-robin with a rotating order.

    On a shared machine, background load then hits every contender alike instead of whichever
    happened to run while it lasted. ``prepare`` (e.g. making a fresh array) is not timed.
    """
    names = list(contenders)
    for name in names:
        prepare, run = contenders[name]
        for _ in range(warmup):
            run(prepare() if prepare else None)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(iters):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            prepare, run = contenders[name]
            arg = prepare() if prepare else None
            t0 = time.perf_counter()
            run(arg)
            samples[name].append(time.perf_counter() - t0)
        if (i + 1) % max(1, iters // 5) == 0:
            log(f"  {i + 1}/{iters} rounds")
    return samples


@contextlib.contextmanager
def quiet():
    """Swallow what the magics print (the first %%lepton cell announces the cluster)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# -- never hang ------------------------------------------------------------------------------
_EMERGENCY: list[Callable[[], None]] = []


def on_emergency(fn: Callable[[], None]) -> None:
    """Register a kill-only clean-up that runs if a phase is stuck past its hard limit."""
    _EMERGENCY.append(fn)


@contextlib.contextmanager
def watchdog(seconds: float, what: str, grace: float = 90.0):
    """Interrupt the main thread after ``seconds``; if it is still stuck ``grace`` seconds
    later (blocked in C), run the emergency clean-ups and exit with status 3.

    Yields a dict whose ``fired`` tells a KeyboardInterrupt of the watchdog from a real one."""
    def hard() -> None:
        print(f"bench: {what} still stuck {grace:.0f} s after the interrupt; killing what the "
              "benchmark started and exiting", file=sys.stderr, flush=True)
        for fn in reversed(_EMERGENCY):
            with contextlib.suppress(Exception):
                fn()
        os._exit(3)

    hard_timer = threading.Timer(seconds + grace, hard)

    def soft() -> None:
        print(f"bench: {what} ran past {seconds:.0f} s; interrupting it", file=sys.stderr,
              flush=True)
        _thread.interrupt_main()

    state = {"fired": False}

    def soft_and_mark() -> None:
        state["fired"] = True
        soft()

    soft_timer = threading.Timer(seconds, soft_and_mark)
    for t in (soft_timer, hard_timer):
        t.daemon = True
        t.start()
    try:
        yield state
    finally:
        soft_timer.cancel()
        hard_timer.cancel()


# -- processes -------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, session id, state letter) of a process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), int(fields[3]), fields[0]


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    return "?"


def processes_in_session(sid: int) -> tuple[list[str], list[str]]:
    """(live processes, zombies) whose session is ``sid`` (the embedded cluster runs in its
    own session). A zombie has exited and holds no resources; only its parent can reap it."""
    live, zombies = [], []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st and st[1] == sid:
                pid = int(entry.name)
                if st[2] == "Z":
                    zombies.append(f"{pid} <defunct>, parent {st[0]}"
                                   f"{' (this process)' if st[0] == os.getpid() else ''}")
                else:
                    live.append(f"{pid} {_cmdline(pid)}")
    return live, zombies


def wait_session_gone(sid: int, timeout: float = 15.0, zombie_wait: float = 5.0
                      ) -> dict[str, list[str]]:
    """Wait until no process of session ``sid`` is left (live ones up to ``timeout``, exited
    ones still waiting to be reaped up to ``zombie_wait`` more); report what is left."""
    deadline = time.monotonic() + timeout
    live, zombies = processes_in_session(sid)
    while live and time.monotonic() < deadline:
        time.sleep(0.25)
        live, zombies = processes_in_session(sid)
    deadline = time.monotonic() + zombie_wait
    while zombies and not live and time.monotonic() < deadline:
        time.sleep(0.25)
        live, zombies = processes_in_session(sid)
    return {"live": live, "zombies": zombies}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                children.setdefault(st[0], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_pids(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def kill_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


# -- how busy was the machine with other people's work? ----------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """Samples every process's CPU time each ``every`` seconds and splits it into this run's
    (descendants of this process, clusters it started, sticky once seen) and everyone else's.

    ``phase(name)`` returns a context manager; ``report()`` gives, per phase, the wall time
    and the average number of cores used by others ("foreign") and by this run.
    """

    def __init__(self, every: float = 1.0):
        self.every = every
        self.ours: set[int] = set()
        self.sids: set[int] = set()
        self._last: dict[int, int] = {}
        self.foreign = self.own = 0.0          # CPU seconds so far
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.phases: dict[str, dict[str, float]] = {}
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu-monitor")
        self._thread.start()

    def _sample(self) -> None:
        me = os.getpid()
        rows: dict[int, tuple[int, int, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            f = raw[raw.rfind(")") + 2:].split()
            rows[int(entry.name)] = (int(f[1]), int(f[3]), int(f[11]) + int(f[12]))
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in rows.items():
            children.setdefault(ppid, []).append(pid)
        todo = [me]
        while todo:
            for c in children.get(todo.pop(), []):
                self.ours.add(c)
                todo.append(c)
        self.ours.add(me)
        with self._lock:
            first = not self._last
            for pid, (_, sid, ticks) in rows.items():
                if sid in self.sids:
                    self.ours.add(pid)
                if first:
                    continue
                # a pid not seen last time was born since: all its CPU time is new
                delta = (ticks - self._last.get(pid, 0)) / _TICK
                if pid in self.ours:
                    self.own += delta
                else:
                    self.foreign += delta
            self._last = {pid: r[2] for pid, r in rows.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):
                self._sample()

    def add_session(self, sid: int | None) -> None:
        if sid:
            with self._lock:
                self.sids.add(sid)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sample()
        t0, f0, o0 = time.perf_counter(), self.foreign, self.own
        try:
            yield
        finally:
            self._sample()
            wall = time.perf_counter() - t0
            self.phases[name] = {"wall_s": wall,
                                 "foreign_cores": (self.foreign - f0) / wall if wall else 0.0,
                                 "own_cores": (self.own - o0) / wall if wall else 0.0}

    def stop(self) -> None:
        self._stop.set()


MONITOR: CpuMonitor | None = None


_PREFIX: list[str] = []


def phase(name: str):
    """Account the machine's CPU use to ``name`` (a no-op until main() starts MONITOR)."""
    name = "".join(f"{p}: " for p in _PREFIX) + name
    return MONITOR.phase(name) if MONITOR is not None else contextlib.nullcontext()


@contextlib.contextmanager
def phase_prefix(prefix: str):
    """Phases inside are named ``prefix: name`` (one benchmark run measuring several setups)."""
    _PREFIX.append(prefix)
    try:
        yield
    finally:
        _PREFIX.pop()
