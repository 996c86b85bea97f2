"""Voila dashboards over the state store: runs, run detail, compression trade-offs,
endpoints (with a "try it" form) and cluster utilisation.

``lepton dashboard [--port P] [--run ID]`` serves the notebooks in ``templates/dashboards``
on 127.0.0.1 with a token required. The notebooks stay thin: the data comes from
:mod:`._data` / :mod:`._endpoints`, the tables from :mod:`._html`, the figures from
:mod:`._plots`; none of these import IPython, tornado or ipywidgets.
"""

from ._launch import Dashboard, DashboardSpec, dashboard_dir, start

__all__ = ["Dashboard", "DashboardSpec", "dashboard_dir", "start"]
