"""IPython side of remote output: the cell's own outputs, ipywidgets progress bars, and an
Output widget that keeps receiving a detached job's output after the user has moved on."""

from __future__ import annotations

import sys
import threading
import uuid
from typing import Any

from ..remote._sink import Sink


def _widgets():
    try:
        import ipywidgets

        return ipywidgets
    except ImportError:  # progress then shows as text
        return None


class _Bars:
    """One ipywidgets bar per remote progress key, created on first use."""

    def __init__(self, show):
        self._show = show
        self._bars: dict[str, Any] = {}

    def update(self, key: str, n: int, total: int | None, desc: str, rate: float) -> bool:
        w = _widgets()
        if w is None:
            return False
        bar = self._bars.get(key)
        if bar is None:
            prog = w.IntProgress(value=0, min=0, max=max(int(total or 1), 1),
                                 bar_style="info", layout=w.Layout(width="50%"))
            label = w.Label()
            bar = self._bars[key] = (w.HBox([w.Label(desc or "progress"), prog, label]), prog,
                                     label)
            self._show(bar[0])
        box, prog, label = bar
        if total:
            prog.max = max(int(total), 1)
            prog.value = min(int(n), prog.max)
            eta = (total - n) / rate if rate > 0 and n < total else 0
            label.value = f"{n}/{total}  {rate:.1f}/s" + (f"  ETA {eta:.0f} s" if eta else "")
            if n >= total:
                prog.bar_style = "success"
        else:
            prog.max, prog.value = 1, 1
            label.value = f"{n}  {rate:.1f}/s"
        if desc:
            box.children[0].value = desc
        return True


class CellSink(Sink):
    """Writes into the running cell: streams as they arrive, rich outputs, widgets."""

    def __init__(self) -> None:
        from IPython.display import display

        self._display = display
        self._ids: dict[str, str] = {}
        self._bars = _Bars(lambda widget: display(widget))

    def stream(self, name: str, text: str) -> None:
        out = sys.stderr if name == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    def display(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str | None,
                update: bool) -> None:
        kwargs: dict[str, Any] = {"raw": True, "metadata": metadata or None}
        if display_id:
            # remote ids are made unique per kernel, so two jobs never update each other's output
            local = self._ids.setdefault(display_id, f"lepton-{uuid.uuid4().hex[:12]}")
            kwargs.update(display_id=local, update=update)
        self._display(data, **kwargs)

    def progress(self, key: str, n: int, total: int | None, desc: str, rate: float) -> None:
        if not self._bars.update(key, n, total, desc, rate) and total and n >= total:
            self.stream("stderr", f"{desc or 'progress'}: {n}/{total}\n")

    def clear(self, wait: bool) -> None:
        from IPython.display import clear_output

        clear_output(wait=wait)

    def status(self, text: str) -> None:
        self.stream("stderr", f"lepton: {text}\n")

    def train_view(self, monitor: Any) -> None:
        self._train = _train_view(self, monitor, self._display)

    def close(self) -> None:
        _close_train_view(self)


class OutputWidgetSink(Sink):
    """Writes into an ipywidgets Output shown in the launching cell, from any thread."""

    def __init__(self) -> None:
        w = _widgets()
        if w is None:
            raise RuntimeError("ipywidgets is not installed")
        self.widget = w.Output()
        self._lock = threading.Lock()
        self._bars = _Bars(self._append_widget)

    def _append(self, output: dict[str, Any]) -> None:
        with self._lock:
            outs = list(self.widget.outputs)
            last = outs[-1] if outs else None
            if (output["output_type"] == "stream" and last and last["output_type"] == "stream"
                    and last["name"] == output["name"]):
                outs[-1] = dict(last, text=last["text"] + output["text"])
            else:
                outs.append(output)
            self.widget.outputs = tuple(outs)

    def _append_widget(self, widget: Any) -> None:
        self._append({"output_type": "display_data", "metadata": {},
                      "data": {"text/plain": repr(widget),
                               "application/vnd.jupyter.widget-view+json": {
                                   "model_id": widget.model_id, "version_major": 2,
                                   "version_minor": 0}}})

    def stream(self, name: str, text: str) -> None:
        self._append({"output_type": "stream", "name": name, "text": text})

    def display(self, data, metadata, display_id, update) -> None:
        self._append({"output_type": "display_data", "data": data, "metadata": metadata or {}})

    def progress(self, key, n, total, desc, rate) -> None:
        self._bars.update(key, n, total, desc, rate)

    def clear(self, wait: bool) -> None:
        with self._lock:
            self.widget.outputs = ()

    def status(self, text: str) -> None:
        self.stream("stderr", f"lepton: {text}\n")

    def train_view(self, monitor: Any) -> None:
        self._train = _train_view(self, monitor, self._append_widget)

    def close(self) -> None:
        _close_train_view(self)


def _train_view(sink: Sink, monitor: Any, show: Any) -> Any:
    """The sink's live training view (created on the first report), updated; None without
    ipywidgets (the text sink's epoch lines are used then)."""
    view = getattr(sink, "_train", None)
    if view is None:
        if _widgets() is None:
            from ..remote._sink import TextSink

            TextSink.train_view(sink, monitor)  # type: ignore[arg-type]
            return None
        from ._train_view import TrainView

        view = TrainView(show)
    sink._train_monitor = monitor  # type: ignore[attr-defined]
    view.update(monitor)
    return view


def _close_train_view(sink: Sink) -> None:
    view = getattr(sink, "_train", None)
    if view is not None:
        view.update(sink._train_monitor, final=True)  # type: ignore[attr-defined]


def local_progress_hook() -> Any:
    """Progress bars for ``lepton.progress`` used in the kernel itself (no remote context)."""
    sink = CellSink()
    return lambda event: sink.progress(*event[1:])
