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


# the name older Jupyter servers look for
load_jupyter_server_extension = _load_jupyter_server_extension
