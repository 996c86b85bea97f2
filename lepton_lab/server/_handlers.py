"""Tornado handlers: HTTP in, a :class:`~._core.SidebarCore` call off the event loop, JSON out.

Every handler needs an authenticated (and authorised) Jupyter user. Errors map by class to a
specific status with a one-line ``{"error": ..., "type": ...}`` body; a cluster that cannot be
reached is a normal answer (``state: disconnected``) or a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any, Callable

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..errors import LeptonError
from ._core import SidebarCore, notebook_for

log = logging.getLogger("lepton_lab.server")

#: Seconds a read may take; actions (connect may start the embedded cluster) get longer.
READ_TIMEOUT_S = 30.0
ACTION_TIMEOUT_S = 180.0
AUTH_RESOURCE = "lepton"


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error: a *NotFound is 404, other Lepton errors say their own,
    Ray's connection failures are 503; anything else is a bug (500)."""
    if isinstance(exc, LeptonError):
        if type(exc).__name__.endswith("NotFound"):
            return 404
        return exc.http_status if type(exc) is not LeptonError else 502
    if isinstance(exc, ConnectionError) or type(exc).__module__.startswith("ray"):
        return 503
    return 500


def _json_default(obj: Any) -> Any:
    for convert in ("item", "tolist"):            # numpy scalars in metrics and reports
        fn = getattr(obj, convert, None)
        if callable(fn):
            return fn()
    return str(obj)


class LeptonHandler(APIHandler):
    """Base of every Lepton route."""

    auth_resource = AUTH_RESOURCE

    @property
    def core(self) -> SidebarCore:
        return self.settings["lepton_core"]

    async def call(self, fn: Callable[..., Any], *args: Any, timeout: float = READ_TIMEOUT_S,
                   status: int = 200) -> None:
        """Run a blocking core call in the core's threads and answer with its result."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.core.executor, functools.partial(fn, *args))
        try:
            result = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return self.fail(504, "TimeoutError", f"the cluster did not answer within "
                                                  f"{timeout:g} s; try again")
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never swallowed
            code = status_for(exc)
            if code == 500:
                log.exception("lepton: %s %s failed", self.request.method, self.request.path)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            return self.fail(code, type(exc).__name__, first)
        await self.reply(result, status)

    async def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=_json_default))

    def fail(self, status: int, kind: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "type": kind}))

    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # tornado's own errors (403 without credentials, 400 bad body) in the same shape
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "type": "HTTPError"}))


class ClusterHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.call(self.core.cluster)


class ConnectHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        address = self.body().get("address")
        if address is not None and not isinstance(address, str):
            raise web.HTTPError(400, "address must be a string")
        await self.call(self.core.connect, address, timeout=ACTION_TIMEOUT_S)


class DisconnectHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self.call(self.core.disconnect)


class JobsHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            limit = min(max(int(self.get_query_argument("limit", "50")), 1), 500)
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        status = self.get_query_argument("status", None) or None
        await self.call(self._jobs, limit, status)

    def _jobs(self, limit: int, status: str | None) -> dict[str, Any]:
        data = self.core.jobs(limit, status)
        sessions = self._sessions
        for job in data["jobs"]:
            job["notebook"] = notebook_for(job.get("origin"), sessions, self._root)
        return data

    async def prepare(self) -> None:
        await super().prepare()
        self._sessions: list[dict[str, Any]] = []
        manager = self.settings.get("session_manager")
        if manager is not None and self.current_user:
            self._sessions = await manager.list_sessions()
        self._root = self.settings.get("server_root_dir")


class JobHandler(JobsHandler):
    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        await self.call(self._job, ref)

    def _job(self, ref: str) -> dict[str, Any]:
        job = self.core.job(ref)
        job["notebook"] = notebook_for(job.get("origin"), self._sessions, self._root)
        return job


class CancelHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        await self.call(self.core.cancel, ref, timeout=ACTION_TIMEOUT_S)


class RunsHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.call(self.core.runs)


class RerunHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def post(self, key: str) -> None:
        await self.call(self.core.rerun, key, timeout=ACTION_TIMEOUT_S, status=202)


class ModelsHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.call(self.core.models)


class UndeployHandler(LeptonHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        await self.call(self.core.undeploy, name, timeout=ACTION_TIMEOUT_S)


_ID = r"([^/]+)"
#: (path under {base_url}lepton/api/, handler): the whole API.
ROUTES: list[tuple[str, type[LeptonHandler]]] = [
    ("cluster", ClusterHandler),
    ("cluster/connect", ConnectHandler),
    ("cluster/disconnect", DisconnectHandler),
    ("jobs", JobsHandler),
    (f"jobs/{_ID}", JobHandler),
    (f"jobs/{_ID}/cancel", CancelHandler),
    ("runs", RunsHandler),
    (f"runs/{_ID}/rerun", RerunHandler),
    ("models", ModelsHandler),
    (f"endpoints/{_ID}/undeploy", UndeployHandler),
]


def setup_handlers(web_app: Any) -> None:
    """Add the Lepton routes (and the core they share) to a Jupyter server's web app."""
    web_app.settings.setdefault("lepton_core", SidebarCore())
    base = url_path_join(web_app.settings.get("base_url", "/"), "lepton", "api")
    web_app.add_handlers(".*$", [(url_path_join(base, path) + "/?$", handler)
                                 for path, handler in ROUTES])
