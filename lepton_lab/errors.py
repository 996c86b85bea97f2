"""One error hierarchy for Lepton Lab.

Every class maps to one kind of failure a user can act on:

- :class:`LeptonUsageError` -- the user asked for something malformed; shown as one line.
- :class:`ClusterUnavailable` -- the Ray cluster cannot be reached or started.
- :class:`InfeasibleRequest` -- the resources asked for do not exist on the cluster.
- :class:`VersionMismatch` -- kernel and cluster run different Python/package versions.
- :class:`SerializationError` -- a variable cannot be shipped to (or from) the cluster.
- :class:`RemoteError` -- the cell raised on the cluster; carries the remote traceback.
- :class:`WorkerDied` -- the process running the cell died (out of memory, killed).
- :class:`CellTimeout` -- ``--timeout`` expired; the remote work was cancelled.
- :class:`JobNotFound` -- a job id or name that the store does not know.
- :class:`MissingDependency` -- an optional extra is not installed.
- :class:`StoreUnavailable` -- the state store under ``LEPTON_HOME`` cannot be opened or written.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error Lepton Lab raises on purpose."""

    #: HTTP status the REST handlers map this class to.
    http_status = 500

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a Python traceback: a mistake is one clear line.
        return [f"{type(self).__name__}: {self}"]


class LeptonUsageError(LeptonError, ValueError):
    """A malformed request by the user: one line, saying what to do instead."""

    http_status = 400


class ClusterUnavailable(LeptonError):
    """The Ray cluster cannot be reached, or the embedded one cannot be started."""

    http_status = 503


class InfeasibleRequest(LeptonUsageError):
    """No node of the cluster can ever satisfy the requested resources."""

    http_status = 409


class VersionMismatch(LeptonError):
    """The kernel and the cluster run different versions of something that must match."""

    http_status = 409


class SerializationError(LeptonUsageError):
    """A variable cannot be pickled for shipping to or from the cluster."""


class JobNotFound(LeptonUsageError):
    """No job with that id or name is recorded."""

    http_status = 404


class JobCancelled(LeptonError):
    """The job was cancelled from another session (the sidebar, `%lepton cancel`, the CLI)."""

    http_status = 409


class MissingDependency(LeptonError):
    """An optional dependency is missing; the message names the extra to install."""

    http_status = 501


class StoreUnavailable(LeptonError):
    """The state store (``LEPTON_HOME/state.sqlite``) cannot be opened or written: a read-only
    or full disk, or a store written by a newer release. The message names the path."""

    http_status = 503


class CellTimeout(LeptonError):
    """The cell ran past ``--timeout``; its remote work was cancelled."""

    http_status = 504


class WorkerDied(LeptonError):
    """The Ray worker that ran the cell died (out of memory, killed, node lost)."""

    http_status = 502


class RemoteError(LeptonError):
    """The cell raised an exception on the cluster.

    ``ename``/``evalue`` are the remote exception's type name and message;
    ``traceback`` is the list of formatted remote traceback lines, whose cell frames carry
    the line numbers of the notebook cell itself. IPython renders it through
    :meth:`_render_traceback_`, so the notebook shows the remote traceback, not ours.
    """

    http_status = 422

    def __init__(self, ename: str, evalue: str, traceback: list[str], where: str = ""):
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback)
        self.where = where
        prefix = f"[{where}] " if where else ""
        super().__init__(f"{prefix}{ename}: {evalue}")

    def _render_traceback_(self) -> list[str]:
        head = [f"Remote traceback ({self.where})" if self.where else "Remote traceback"]
        return head + [line.rstrip("\n") for line in self.traceback]


class CellSyntaxError(LeptonUsageError):
    """The cell does not parse; raised in the kernel before anything is sent."""

    def __init__(self, exc: SyntaxError):
        self.lineno, self.offset, self.text = exc.lineno, exc.offset, exc.text
        super().__init__(f"{exc.msg} (cell line {exc.lineno}); nothing was sent")
        self.msg = exc.msg

    def _render_traceback_(self) -> list[str]:
        lines = [f"  Cell line {self.lineno}"]
        if self.text:
            text = self.text.rstrip("\n")
            stripped = text.lstrip()
            lines.append(f"    {stripped}")
            if self.offset:
                lines.append("    " + " " * max(0, self.offset - 1 - (len(text) - len(stripped)))
                             + "^")
        lines.append(f"SyntaxError: {self.msg} (nothing was sent to the cluster)")
        return lines
