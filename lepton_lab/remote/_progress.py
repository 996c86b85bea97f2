"""``lepton_lab.progress``: a progress bar that shows in the launching cell as an ipywidget.

Works like a small tqdm::

    for batch in lepton.progress(loader, desc="epoch 1"):
        ...

    bar = lepton.progress(total=100, desc="steps")
    bar.update(10)

On the cluster it sends throttled progress events to the cell; in the kernel itself it uses
the local hook that the IPython extension registers (an ipywidgets bar).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

from ._executor import current_emitter

#: Set by the IPython extension: renders progress events in the kernel (no remote context).
LOCAL_HOOK: Callable[[tuple], None] | None = None
_IDS = itertools.count()


class progress:  # noqa: N801 - used like a function, as tqdm is
    """Iterate with a live progress bar in the notebook cell."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", min_interval: float = 0.1):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.n = total, desc, 0
        self._min_interval = min_interval
        self._start = time.monotonic()
        self._last = 0.0
        self._emitter = current_emitter()
        self._key = f"p{next(_IDS)}-{id(self):x}"
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        event = ("progress", self._key, self.n, self.total, self.desc, self.n / elapsed)
        if self._emitter is not None:
            self._emitter.emit(event)
        elif LOCAL_HOOK is not None:
            LOCAL_HOOK(event)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._send(force=self.total is not None and self.n >= self.total)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._send(force=True)

    def close(self) -> None:
        self._send(force=True)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress() needs an iterable to iterate; or call update(n)")
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> "progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
