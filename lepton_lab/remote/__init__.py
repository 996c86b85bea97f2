"""Remote cells: run notebook code on the Ray cluster, one-shot, in a warm group, or detached."""

from ._progress import progress
from ._runner import CellOutcome, run_cell
from ._sink import Sink, TextSink
from ._spec import CellSpec

__all__ = ["CellOutcome", "CellSpec", "Sink", "TextSink", "progress", "run_cell"]
