"""The notebook adapter: what speaks IPython and ipywidgets to a person.

``%load_ext lepton_lab`` calls :func:`register`. The magics (:mod:`.magics`) parse a line
into a frozen spec, call the core (``remote``, ``training``, ``compress``, ``serve``,
``pipeline``) and show what comes back: :mod:`._display` (cell sinks, progress widgets),
:mod:`._train_view` (the live training view), :mod:`._status` (the cluster as HTML),
:mod:`._doc` (``%lepton?``). Nothing below this package imports it.
"""

from .magics import register, unregister

__all__ = ["register", "unregister"]
