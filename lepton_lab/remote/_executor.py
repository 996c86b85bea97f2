"""The side of a remote cell that runs on the cluster.

A cell runs in a :class:`CellThread` while the calling Ray task (or actor method) is a
generator that yields batches of output events as they happen. Events are plain tuples:

``("stream", "stdout"|"stderr", text)``, ``("display", data, metadata, display_id, update)``,
``("progress", key, n, total, desc, rate)``, ``("clear", wait)`` and, last,
``("done", result)`` where ``result`` holds the status, the remote traceback and the pickled
values of the names the cell assigned.
"""

from __future__ import annotations

import ast
import base64
import concurrent.futures
import contextlib
import ctypes
import io
import linecache
import os
import queue
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator

from ._capture import fd_capture, keep_for_process
from ._values import pack_values, resolve_values

MPL_BACKEND = "module://lepton_lab.remote._mpl_backend"

_STATE = threading.local()
_GLOBAL_EMITTER: "Emitter | None" = None


# -- events ----------------------------------------------------------------------------------
class Emitter:
    """Thread-safe buffer of output events, drained in batches by the streaming generator."""

    def __init__(self, rank: int | None = None):
        self.rank = rank
        self._events: list[tuple] = []
        self._cond = threading.Condition()
        self._done = False

    def emit(self, event: tuple) -> None:
        with self._cond:
            last = self._events[-1] if self._events else None
            if event[0] == "stream" and last and last[0] == "stream" and last[1] == event[1]:
                self._events[-1] = ("stream", event[1], last[2] + event[2])
            else:
                self._events.append(event)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def drain(self, interval: float) -> list[tuple]:
        """Wait for events (or the end), let more arrive for ``interval``, return them all."""
        with self._cond:
            self._cond.wait_for(lambda: self._events or self._done, timeout=1.0)
            if self._events and not self._done:
                self._cond.wait_for(lambda: self._done, timeout=interval)
            events, self._events = self._events, []
            return events

    # conveniences used by display(), progress() and the streams
    def stream(self, name: str, text: str) -> None:
        if text:
            self.emit(("stream", name, text))

    def display(self, obj: Any, *, display_id: str | None = None, update: bool = False,
                raw: bool = False, metadata: dict | None = None) -> None:
        data, md = (obj, metadata or {}) if raw else mimebundle(obj)
        self.emit(("display", data, md, display_id, update))


def current_emitter() -> Emitter | None:
    return getattr(_STATE, "emitter", None) or _GLOBAL_EMITTER


class _TextStream(io.TextIOBase):
    """sys.stdout / sys.stderr replacement that turns writes into stream events."""

    def __init__(self, emitter: Emitter, name: str):
        self._emitter, self._name = emitter, name

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._emitter.stream(self._name, text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return False


# -- rich output -----------------------------------------------------------------------------
_REPR_METHODS = (
    ("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"), ("image/png", "_repr_png_"), ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"), ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


def mimebundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MIME bundle Jupyter would show for ``obj`` (the same repr protocol IPython uses)."""
    data: dict[str, Any] = {}
    md: dict[str, Any] = {}
    fig_cls = _figure_class()
    if fig_cls is not None and isinstance(obj, fig_cls):
        return _figure_bundle(obj), {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        try:
            res = method()
            if isinstance(res, tuple):
                res, md = res[0], dict(res[1] or {})
            data.update(res or {})
        except Exception:
            pass
    for mime, attr in _REPR_METHODS:
        if mime in data or isinstance(obj, type):
            continue
        method = getattr(obj, attr, None)
        if not callable(method):
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, tuple):
            value, md[mime] = value
        if value is None:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        data[mime] = value
    data.setdefault("text/plain", repr(obj))
    return data, md


def display(*objs: Any, display_id: str | None = None, update: bool = False, raw: bool = False,
            **_: Any) -> None:
    """Show objects in the notebook cell that launched this remote work."""
    emitter = current_emitter()
    for obj in objs:
        if emitter is None:
            print(repr(obj))
        else:
            emitter.display(obj, display_id=display_id, update=update, raw=raw)


def _figure_class():
    mpl = sys.modules.get("matplotlib.figure")
    return getattr(mpl, "Figure", None) if mpl else None


def _figure_bundle(fig: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": repr(fig)}


def flush_figures() -> None:
    """Show every open matplotlib figure in the cell, then close them (as the inline backend)."""
    plt = sys.modules.get("matplotlib.pyplot")
    emitter = current_emitter()
    if plt is None or emitter is None:
        return
    for num in plt.get_fignums():
        emitter.display(_figure_bundle(plt.figure(num)), raw=True)
    plt.close("all")


def _prepare_matplotlib(source: str) -> None:
    os.environ["MPLBACKEND"] = MPL_BACKEND
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and plt.get_backend() != MPL_BACKEND:
        plt.switch_backend(MPL_BACKEND)


def _patch_ipython_display(source: str) -> None:
    """Route ``IPython.display.display`` (if the cell uses it) to the cell's output."""
    if "IPython" not in source and "IPython.display" not in sys.modules:
        return
    try:
        import IPython.core.display_functions as idf
        import IPython.display as ipd
    except Exception:
        return
    ipd.display = display
    idf.display = display


# -- the cell thread -------------------------------------------------------------------------
class CellThread:
    """One long-lived thread that runs cells in order.

    A warm-group rank keeps one, so thread-local state (the CUDA device, autocast, grad mode)
    persists from cell to cell as it does in a notebook kernel.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name="lepton-cell", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._queue.get()
            if fn is None:
                return
            self.busy = True
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
            finally:
                self.busy = False

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running cell (at its next Python bytecode)."""
        if not self.busy or self._thread.ident is None:
            return False
        n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self._thread.ident), ctypes.py_object(KeyboardInterrupt))
        return n == 1

    def stop(self) -> None:
        self._queue.put((None, None))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


# -- running a cell --------------------------------------------------------------------------
def new_namespace() -> dict[str, Any]:
    import builtins

    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    ns["display"] = display
    # the public package as `lepton` (lepton.progress, lepton.record, lepton.training...): it
    # is this module's parent, so it is always loaded; the cell uses it, this layer does not
    ns["lepton"] = sys.modules[__name__.partition(".")[0]]
    return ns


def _format_error(exc: BaseException, filename: str) -> dict[str, Any]:
    tb = exc.__traceback__
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename != filename:
        first = first.tb_next
    te = traceback.TracebackException(type(exc), exc, first if first is not None else tb)
    lines = list(te.format())
    if filename in "".join(lines):
        lines = [line.replace(f'File "{filename}", ', "Cell ") for line in lines]
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}


def _compile(source: str, filename: str):
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


def execute(payload: dict[str, Any], ns: dict[str, Any], emitter: Emitter) -> dict[str, Any]:
    """Run one cell in ``ns`` with its output going to ``emitter``; return the result dict."""
    start = time.time()
    source, filename = payload["source"], payload["filename"]
    result: dict[str, Any] = {"status": "ok", "host": socket.gethostname(), "pid": os.getpid(),
                              "rank": emitter.rank}
    saved_env = {k: os.environ.get(k) for k, _ in payload.get("env", ())}
    old_out, old_err = sys.stdout, sys.stderr
    _STATE.emitter = emitter
    try:
        ns.update(resolve_values(payload.get("values") or {}))
        os.environ.update(dict(payload.get("env", ())))
        _prepare_matplotlib(source)
        _patch_ipython_display(source)
        body, last = _compile(source, filename)
        with fd_capture(emitter) if payload.get("capture_fd", True) else \
                contextlib.nullcontext():
            sys.stdout, sys.stderr = _TextStream(emitter, "stdout"), _TextStream(emitter, "stderr")
            try:
                exec(body, ns)
                if last is not None:
                    value = eval(last, ns)
                    if value is not None:
                        ns["_"] = value
                        emitter.display(value)
                flush_figures()
            finally:
                sys.stdout, sys.stderr = old_out, old_err
    except KeyboardInterrupt:
        result["status"] = "interrupted"
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: the cell failed
        result["status"] = "error"
        result["error"] = _format_error(exc, filename)
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        _cell_ended()
        _STATE.emitter = None
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if result["status"] == "ok" and payload.get("pull", True):
        names = payload.get("out") or payload.get("assigns") or ()
        result["values"], result["skipped"] = pack_values(ns, names)
    result["elapsed"] = time.time() - start
    return result


_AT_CELL_END: list[Callable[[], None]] = []


def at_cell_end(fn: Callable[[], None]) -> None:
    """Call ``fn`` after every cell, whatever its outcome. A package above this layer hooks in
    this way (``training`` sends the metrics a cell reported but had not sent yet), so this
    layer needs no knowledge of it."""
    if fn not in _AT_CELL_END:
        _AT_CELL_END.append(fn)


def _cell_ended() -> None:
    for fn in _AT_CELL_END:
        try:
            fn()
        except Exception:  # noqa: BLE001 - never turn a finished cell into a failure here
            pass


#: a cell that has sent nothing after this many seconds sends a ("running",) event
RUNNING_AFTER_S = 1.0


def stream_cell(payload: dict[str, Any], ns: dict[str, Any], runner: CellThread,
                rank: int | None = None) -> Iterator[list[tuple]]:
    """Run the cell on ``runner`` and yield its events in batches, ending with ``done``."""
    emitter = Emitter(rank)
    fut = runner.submit(lambda: execute(payload, ns, emitter))
    fut.add_done_callback(lambda _f: emitter.finish())
    interval = float(payload.get("interval", 0.05))
    began, sent = time.monotonic(), False
    while not fut.done():
        batch = emitter.drain(interval)
        if batch:
            sent = True
            yield batch
        elif not sent and time.monotonic() - began > RUNNING_AFTER_S:
            # a silent cell tells the kernel once that it runs (not waiting for resources)
            sent = True
            yield [("running",)]
    try:
        result = fut.result()
    except BaseException as exc:  # noqa: BLE001 - e.g. an interrupt outside the cell body
        result = {"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "error",
                  "error": {"ename": type(exc).__name__, "evalue": str(exc), "traceback": []},
                  "rank": rank}
    tail = emitter.drain(0.0)
    tail.append(("done", result))
    yield tail


_TASK_RUNNER: CellThread | None = None


def run_task(payload: dict[str, Any]) -> Iterator[list[tuple]]:
    """Body of the one-shot Ray task (a streaming generator).

    A task worker runs one task at a time, so its cell thread is kept for the next task that
    Ray schedules on the same worker process (saves a thread start per cell). A cancelled
    task's worker is killed, thread and all.
    """
    global _TASK_RUNNER
    if _TASK_RUNNER is None or not _TASK_RUNNER.alive:
        # The cell thread hands each batch to this generator thread; with the default 5 ms
        # GIL switch interval that hand-off dominated a trivial cell's round trip.
        sys.setswitchinterval(0.0005)
        keep_for_process()
        _TASK_RUNNER = CellThread()
    yield from stream_cell(payload, new_namespace(), _TASK_RUNNER)
