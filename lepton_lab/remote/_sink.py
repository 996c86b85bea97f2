"""Where remote output goes on the kernel side: a small protocol plus the rank folding.

The core never imports IPython. The IPython adapter (``lepton_lab.notebook._display``) implements
:class:`Sink` with real notebook outputs and ipywidgets; :class:`TextSink` serves the CLI.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any


class Sink:
    """Receives a remote cell's output events, in order."""

    def stream(self, name: str, text: str) -> None:
        raise NotImplementedError

    def display(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str | None,
                update: bool) -> None:
        self.stream("stdout", str(data.get("text/plain", "")) + "\n")

    def progress(self, key: str, n: int, total: int | None, desc: str, rate: float) -> None:
        pass

    def clear(self, wait: bool) -> None:
        pass

    def status(self, text: str) -> None:
        """A one-line status (waiting for resources, interrupted ...)."""
        self.stream("stderr", f"lepton: {text}\n")

    def close(self) -> None:
        pass

    def train_event(self, payload: dict[str, Any]) -> None:
        """A rank's training report (see :mod:`lepton_lab.remote._monitor`)."""

    def train_view(self, monitor: Any) -> None:
        """Show the training job's state (a :class:`TrainMonitor`) after it changed."""

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "stream":
            self.stream(event[1], event[2])
        elif kind == "display":
            self.display(event[1], event[2], event[3], event[4])
        elif kind == "progress":
            self.progress(*event[1:])
        elif kind == "clear":
            self.clear(event[1])
        elif kind == "train":
            self.train_event(event[1])


class TextSink(Sink):
    """Plain text to this process's stdout/stderr (the command-line tool, tests)."""

    def stream(self, name: str, text: str) -> None:
        out = sys.stderr if name == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    def progress(self, key: str, n: int, total: int | None, desc: str, rate: float) -> None:
        if total and n >= total:
            self.stream("stderr", f"{desc or 'progress'}: {n}/{total} ({rate:.1f}/s)\n")

    def train_view(self, monitor: Any) -> None:
        # one line per whole epoch reached (the widget view redraws instead)
        epoch = int(monitor.epoch) if monitor.epoch is not None else None
        if epoch is not None and epoch != getattr(self, "_train_epoch", None):
            self._train_epoch = epoch
            self.stream("stderr", f"train: {monitor.summary_line()}\n")


class LogTee(Sink):
    """Keeps a bounded tail of the text output (for the job record) and forwards everything."""

    def __init__(self, inner: Sink, limit: int = 256 * 1024):
        self.inner, self.limit = inner, limit
        self._parts: deque[str] = deque()
        self._size = 0
        self.monitor: Any = None  # a TrainMonitor once the first training report arrives
        self.job_id: str | None = None   # set by the Recorder: progress goes to the job record
        self._progress_at = 0.0
        # every cell path makes its tee right after connecting: what the connection has to
        # tell once (a fresh embedded cluster replaced one that stopped) goes to that cell
        from ..cluster import take_notices

        for note in take_notices():
            self.status(note)

    def _keep(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        while self._size > self.limit and len(self._parts) > 1:
            self._size -= len(self._parts.popleft())

    @property
    def text(self) -> str:
        return "".join(self._parts)[-self.limit:]

    def stream(self, name: str, text: str) -> None:
        self._keep(text)
        self.inner.stream(name, text)

    def display(self, data, metadata, display_id, update) -> None:
        self._keep(str(data.get("text/plain", ""))[:2000] + "\n")
        self.inner.display(data, metadata, display_id, update)

    def progress(self, *args: Any) -> None:
        self.inner.progress(*args)
        key, n, total, desc, rate = args
        self._save_progress({"n": n, "total": total, "desc": desc, "rate": rate},
                            final=bool(total) and n >= total)

    def _save_progress(self, progress: dict[str, Any], final: bool = False) -> None:
        """At most once a second (and at the end of a bar), so other sessions see it."""
        now = time.monotonic()
        if self.job_id is None or (now - self._progress_at < 1.0 and not final):
            return
        self._progress_at = now
        try:
            from ..store import get_store

            get_store().set_job_progress(self.job_id, progress)
        except Exception:  # noqa: BLE001 - progress is a nicety; the cell goes on
            pass

    def train_event(self, payload: dict[str, Any]) -> None:
        if self.monitor is None:
            from ._monitor import TrainMonitor

            self.monitor = TrainMonitor()
        self.monitor.add(payload)
        fraction = self.monitor.fraction
        if fraction is not None:
            self._save_progress({"n": round(fraction * 100), "total": 100, "desc": "training",
                                 "rate": self.monitor.samples_per_s})
        for text in self.monitor.take_new_warnings():
            self.status(f"WARNING {text}")
        self.inner.train_view(self.monitor)

    @property
    def warnings(self) -> list[str]:
        return list(self.monitor.warnings) if self.monitor is not None else []

    def clear(self, wait: bool) -> None:
        self.inner.clear(wait)

    def status(self, text: str) -> None:
        self.inner.status(text)

    def close(self) -> None:
        self.inner.close()


class RankFolder:
    """Routes events per rank: rank 0 (or every rank with ``all_ranks``) live, others tailed."""

    def __init__(self, sink: Sink, world: int, all_ranks: bool, tail_lines: int):
        self.sink, self.world, self.all_ranks, self.tail_lines = sink, world, all_ranks, tail_lines
        self._tails: dict[int, deque[str]] = {}
        self._counts: dict[int, int] = {}
        self._partial: dict[tuple[int, str], str] = {}

    def handle(self, rank: int | None, event: tuple) -> None:
        if (rank is None or self.world == 1 or (rank == 0 and not self.all_ranks)
                or event[0] == "train"):  # training reports of every rank feed the monitor
            self.sink.handle(event)
            return
        if self.all_ranks:
            if event[0] == "stream":
                self._prefixed(rank, event[1], event[2])
            else:
                self.sink.handle(event)
            return
        if event[0] == "stream":
            key = (rank, event[1])
            text = self._partial.pop(key, "") + event[2]
            lines = text.split("\n")
            if lines[-1]:
                self._partial[key] = lines[-1]
            tail = self._tails.setdefault(rank, deque(maxlen=self.tail_lines))
            for line in lines[:-1]:
                tail.append(line)
                self._counts[rank] = self._counts.get(rank, 0) + 1

    def _prefixed(self, rank: int, name: str, text: str) -> None:
        key = (rank, name)
        text = self._partial.pop(key, "") + text
        lines = text.split("\n")
        if lines[-1]:
            self._partial[key] = lines[-1]
        body = "".join(f"[rank {rank}] {line}\n" for line in lines[:-1])
        if body:
            self.sink.stream(name, body)

    def finish(self) -> None:
        for (rank, name), rest in sorted(self._partial.items()):
            if self.all_ranks:
                self.sink.stream(name, f"[rank {rank}] {rest}\n")
            else:
                self._tails.setdefault(rank, deque(maxlen=self.tail_lines)).append(rest)
                self._counts[rank] = self._counts.get(rank, 0) + 1
        self._partial.clear()
        for rank in sorted(self._tails):
            tail = self._tails[rank]
            hidden = self._counts.get(rank, 0) - len(tail)
            more = f", {hidden} earlier lines folded" if hidden > 0 else ""
            self.sink.stream("stdout", f"--- rank {rank} (last {len(tail)} lines{more}; "
                                       "--all-ranks shows every line) ---\n")
            self.sink.stream("stdout", "".join(f"[rank {rank}] {line}\n" for line in tail))
