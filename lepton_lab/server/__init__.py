"""Jupyter server extension: Lepton's REST API for the JupyterLab sidebar.

Routes live under ``{base_url}lepton/api/`` (see :data:`._handlers.ROUTES`); every one needs
an authenticated Jupyter user. The handlers only translate HTTP into calls on
:class:`._core.SidebarCore`, which calls the same core as the magics and the CLI.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "lepton_lab.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from ._handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("lepton_lab: REST API at %slepton/api/",
                       serverapp.web_app.settings.get("base_url", "/"))
    from .. import cluster

    # the embedded cluster comes up while the user opens a notebook (never with an address
    # set; LEPTON_AUTOSTART=0 turns it off); this server connects only when asked
    if cluster.start_in_background(connect=False):
        serverapp.log.info("lepton_lab: starting the embedded Ray cluster in the background "
                           "(log: %s)", cluster.get_config().home_path / "cluster.log")


# the name older Jupyter servers look for
load_jupyter_server_extension = _load_jupyter_server_extension
