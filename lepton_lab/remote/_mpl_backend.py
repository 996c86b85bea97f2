"""Matplotlib backend for remote cells: ``plt.show()`` sends the figures to the notebook cell."""

from matplotlib.backend_bases import FigureManagerBase as FigureManager  # noqa: F401
from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas  # noqa: F401


def show(*args, **kwargs) -> None:
    from ._executor import flush_figures

    flush_figures()
