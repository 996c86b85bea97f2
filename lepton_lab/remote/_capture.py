"""fd 1/2 of a worker process into the running cell: what C code and subprocesses print.

The cell's ``sys.stdout``/``sys.stderr`` are replaced by the executor; this module catches what
bypasses Python's streams (C extensions, ``os.system``, child processes) at the file
descriptors. Used by :mod:`._executor`; the emitter only needs a ``stream(name, text)``.

Two ways: in a Ray worker that Lepton owns (a one-shot task's worker, a warm-group rank:
:func:`keep_for_process` was called) fd 1/2 are routed once for the life of the process and
each cell only switches where the output goes; anywhere else (a cell executed in-process, a
training rank) pipes are set up for the cell and fd 1/2 are restored after it.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import os
import threading
from typing import Any, Iterator


class _FdCapture:
    """Pipes for one cell: fd 1/2 are restored when it ends."""

    def __init__(self, emitter: Any):
        self._emitter = emitter
        self._saved: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "_FdCapture":
        for fd, name in ((1, "stdout"), (2, "stderr")):
            try:
                read_end, write_end = os.pipe()
                self._saved[fd] = os.dup(fd)
                os.dup2(write_end, fd)
                os.close(write_end)
            except OSError:
                continue
            t = threading.Thread(target=self._pump, args=(read_end, name), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _pump(self, read_end: int, name: str) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    return
                self._emitter.stream(name, chunk.decode("utf-8", errors="replace"))

    def __exit__(self, *exc: Any) -> None:
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # closes our pipe's write end: the pump sees EOF
            os.close(saved)
        for t in self._threads:
            t.join(timeout=2.0)


class _FdRouter:
    """Send what C code and subprocesses write to fd 1/2 into the running cell too.

    Set up once per worker process (pipes and pump threads cost ~0.4 ms a cell when made per
    cell): fd 1 and 2 become the write ends of two pipes for good, and a pump thread per pipe
    hands what arrives to the cell's emitter, or between cells to the original file (Ray's
    worker log). Switching cells is a sync: a marker written into each pipe comes out of the
    pump once everything written before it has been delivered where it belonged.
    """

    def __init__(self, orig: dict[int, int] | None = None) -> None:
        self._marker = b"\x00lepton-sync-" + os.urandom(8).hex().encode() + b"\x00"
        self._emitter: Any = None
        self._seen: dict[int, threading.Event] = {}
        self._pipes: dict[int, int] = {}
        self._orig: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self._writers: dict[int, int] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            self._orig[fd] = orig[fd] if orig else os.dup(fd)
            os.dup2(write_end, fd)
            self._writers[fd] = write_end    # our own way in, whatever a cell does to fd 1/2
            self._pipes[fd] = read_end
            self._seen[fd] = threading.Event()
            pump = threading.Thread(target=self._pump, args=(fd, name), daemon=True,
                                    name=f"lepton-fd{fd}")
            pump.start()
            self._threads.append(pump)

    def healthy(self) -> bool:
        """False when something (a cell's own dup2, a closed fd) took fd 1/2 away from us."""
        try:   # both ends of one pipe share its inode
            return all(os.fstat(fd).st_ino == os.fstat(read_end).st_ino
                       for fd, read_end in self._pipes.items()) and all(
                t.is_alive() for t in self._threads)
        except OSError:
            return False

    def _pump(self, fd: int, name: str) -> None:
        marker, decoder = self._marker, codecs.getincrementaldecoder("utf-8")("replace")
        buf = b""
        while True:
            try:
                chunk = os.read(self._pipes[fd], 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                cut = buf.find(marker)
                if cut < 0:
                    break
                self._deliver(fd, name, buf[:cut], decoder, final=True)
                buf = buf[cut + len(marker):]
                self._seen[fd].set()
            keep = next((k for k in range(min(len(marker) - 1, len(buf)), 0, -1)
                         if marker.startswith(buf[-k:])), 0)
            self._deliver(fd, name, buf[:len(buf) - keep], decoder)
            buf = buf[len(buf) - keep:]

    def _deliver(self, fd: int, name: str, data: bytes, decoder: Any,
                 final: bool = False) -> None:
        emitter = self._emitter
        if emitter is None:
            while data:
                try:
                    data = data[os.write(self._orig[fd], data):]
                except OSError:
                    break
            return
        text = decoder.decode(data, final)
        if text:
            emitter.stream(name, text)

    def sync(self, timeout: float = 2.0) -> None:
        """Return once all written to fd 1/2 so far has been delivered."""
        for fd in self._pipes:
            self._seen[fd].clear()
            os.write(self._writers[fd], self._marker)
        for fd in self._pipes:
            self._seen[fd].wait(timeout)

    def close(self) -> None:
        """Let the pumps end (after what is in the pipes) once fd 1/2 point elsewhere."""
        for fd, write_end in self._writers.items():
            with contextlib.suppress(OSError):
                os.close(write_end)

    @contextlib.contextmanager
    def route(self, emitter: Any) -> Iterator[None]:
        self.sync()               # what came before the cell (Ray's own lines) is not its
        self._emitter = emitter
        try:
            yield
        finally:
            try:
                self.sync()
            finally:
                self._emitter = None


_ROUTER: _FdRouter | None = None
_KEEP = False


def keep_for_process() -> None:
    """This process is a worker that Lepton owns: route fd 1/2 once, for its whole life."""
    global _KEEP
    _KEEP = True


def fd_capture(emitter: Any) -> Any:
    """Capture fd 1/2 into ``emitter`` for one cell (a context manager)."""
    global _ROUTER
    if not _KEEP:
        return _FdCapture(emitter)
    try:   # made on first use, remade if a cell took fd 1/2 away
        if _ROUTER is None or not _ROUTER.healthy():
            if _ROUTER is None:   # what is still in the pipes reaches the log at exit
                atexit.register(lambda: _ROUTER is not None and _ROUTER.sync(1.0))
            # a remade router still sends what is outside cells to the worker's log
            old, _ROUTER = _ROUTER, _FdRouter(_ROUTER._orig if _ROUTER is not None else None)
            if old is not None:
                old.close()
    except OSError:
        return contextlib.nullcontext()
    return _ROUTER.route(emitter)
