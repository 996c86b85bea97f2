"""A real multi-node Ray cluster on this machine: a head and worker nodes, each started with
``ray start --block`` in its own session, so that one node can be killed as a whole.

Used by ``tests/integration/test_multinode.py`` and ``bench/chaos_train.py``. Each node is a
separate raylet with ``--num-cpus 1`` (ranks asking for one CPU land on different nodes); the
cluster has its own ports, temp dir and token, and is stopped by killing its sessions only
(never ``ray stop``, which would stop every Ray cluster on the machine).

Killing a node means SIGKILL to its session: the ``ray start`` process, its raylet, agents and
every worker process the raylet started (all inherit the session), as when a machine is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
#: How a node's death is noticed: the GCS health-checks each raylet every period and declares
#: it dead after this many misses in a row (Ray's defaults are every 3000 ms, 5 misses: ~15 s).
#: A lost node refuses the checks at once and is found in ~5 s; a live raylet on a busy
#: machine would have to miss five 3-s deadlines in a row.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                   "RAY_health_check_failure_threshold": "5"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[3]) if fields[0] != "Z" else None


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a node: its ``ray start``, raylet and workers)."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and _sid(int(e.name)) == sid]


def kill_session(sid: int, wait: float = 10.0) -> list[int]:
    """SIGKILL every process of session ``sid``; returns those still alive after ``wait``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    left = session_pids(sid)
    while left and time.monotonic() < deadline:
        for pid in left:   # a process that made its own group but kept the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        left = session_pids(sid)
    return left


class Node:
    """One ``ray start --block`` process (its pid is the node's session id)."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.args, self.log = name, args, log
        self.proc: subprocess.Popen | None = None

    @property
    def sid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class MultiNodeCluster:
    """A head (``head_cpus`` CPUs) and ``workers`` worker nodes of one CPU each.

    Each worker node carries a resource ``lepton_node_<name>: 1`` so the cluster's view of a
    node (``ray.nodes()``) can be matched to the process that runs it.
    """

    def __init__(self, workers: int = 2, head_cpus: int = 1, root: str | None = None,
                 extra_env: dict[str, str] | None = None):
        # a short root: Ray's Unix sockets live under it (paths are limited to ~107 bytes)
        self.root = Path(root or tempfile.mkdtemp(prefix="lmn-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0", GRPC_POLL_STRATEGY="poll",
                        **FAST_NODE_DEATH, **(extra_env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.head = Node("head", ["--head", "--port", str(self.port),
                                  "--num-cpus", str(head_cpus), "--include-dashboard", "false",
                                  "--ray-client-server-port", str(free_port()),
                                  "--temp-dir", str(self.root / "ray"), *self._ports()],
                         self.root / "head.log")
        self.workers = [Node(f"w{i + 1}", ["--address", self.address, "--num-cpus", "1",
                                           "--resources", json.dumps({f"lepton_node_w{i + 1}": 1})],
                             self.root / f"w{i + 1}.log") for i in range(workers)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def _ports() -> list[str]:
        # every fixed default port of a node, chosen free, so that clusters of other test runs
        # on the machine (and our own nodes) do not collide
        return ["--node-ip-address", "127.0.0.1",
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port())]

    def start(self, timeout: float = 180) -> MultiNodeCluster:
        """Start the head, then each worker node (one at a time: a node's start is CPU-bound
        for ~10 s, and two at once on a 2-core machine make both slower than 30 s)."""
        try:
            for node in [self.head, *self.workers]:
                self._start(node, timeout)
        except BaseException:
            self.stop(remove=False)   # the logs stay for whoever reads the error
            raise
        return self

    def _start(self, node: Node, timeout: float, tries: int = 3) -> None:
        # `ray start` gives a raylet 30 s to register with the GCS (and the raylet gives its
        # Python agent ~15 s to come up); on a machine busy with other test runs that is
        # sometimes too short, and the next try then succeeds
        for attempt in range(tries):
            offset = self._launch(node)
            try:
                return self._wait(node, offset, timeout)
            except RuntimeError:
                if attempt == tries - 1:
                    raise

    def _launch(self, node: Node) -> int:
        args = node.args if node is self.head else node.args + self._ports()
        with open(node.log, "a") as out:
            offset = out.tell()      # a restarted node appends to its log: read past the old
            node.proc = subprocess.Popen([RAY, "start", "--block", *args], stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return offset

    def _wait(self, node: Node, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self._log_since(node, offset):
            if node.proc.poll() is not None or time.monotonic() > deadline:
                kill_session(node.proc.pid)
                raise RuntimeError(f"ray start of {node.name} failed: "
                                   f"{self._log_since(node, offset)[-2000:]}")
            time.sleep(0.2)

    @staticmethod
    def _log_since(node: Node, offset: int) -> str:
        with open(node.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def node(self, name: str) -> Node:
        return next(n for n in [self.head, *self.workers] if n.name == name)

    def kill(self, name: str) -> float:
        """Lose node ``name`` as a machine is lost: SIGKILL to its whole session.
        Returns the time.time() of the kill."""
        node = self.node(name)
        at = time.time()
        left = kill_session(node.sid)
        if left:
            raise RuntimeError(f"node {name}: processes {left} survived SIGKILL")
        node.proc.wait(timeout=10)
        return at

    def restart(self, name: str, timeout: float = 180) -> None:
        """Start node ``name`` again (a new raylet, so a new node id)."""
        node = self.node(name)
        if not node.alive:
            self._start(node, timeout)

    def restart_lost(self, timeout: float = 180) -> list[str]:
        """Start again every worker node that was killed; returns their names."""
        dead = [n for n in self.workers if not n.alive]
        for node in dead:
            self._start(node, timeout)
        return [n.name for n in dead]

    def stop(self, remove: bool = True) -> None:
        """Kill every node of this cluster (workers first), and nothing else; ``remove``
        its temp dir and logs."""
        for node in [*reversed(self.workers), self.head]:
            if node.proc is not None:
                kill_session(node.proc.pid)
                with contextlib.suppress(Exception):
                    node.proc.wait(timeout=10)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def kernel_env(self, home: str | Path) -> dict[str, str]:
        """The environment of a kernel (or driver) that uses this cluster as its RAY_ADDRESS."""
        return dict(self.env, RAY_ADDRESS=self.address, LEPTON_HOME=str(home))


# -- the node-loss case (the test and bench/chaos_train.py) --------------------------------------
#: A %%lepton train cell: a small DDP model, EPOCHS epochs of STEPS steps of SLEEP seconds, a
#: checkpoint after each epoch; on reaching epoch KILL_EPOCH in the first attempt every rank
#: writes its node id into MARKS/rank<r> (the checkpoint of the epoch before is reported).
TRAIN_CELL = """
import os, time, torch, ray
import lepton_lab.training as lt
torch.manual_seed(0)
model = lt.prepare_model(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(64, 8); y = x.sum(1, keepdim=True)
node = ray.get_runtime_context().get_node_id()
for epoch in lt.epochs(EPOCHS, model=model, optimizer=opt):
    if epoch == KILL_EPOCH and lt._helpers._RUN.attempt == 1:
        with open(os.path.join(MARKS, f"rank{lt.rank()}"), "w") as f:
            f.write(node)
    for step in range(STEPS):
        opt.zero_grad(); loss = torch.nn.functional.mse_loss(model(x), y); loss.backward()
        opt.step(); lt.report(loss=loss.item())
        time.sleep(SLEEP)
"""


def kill_when_marked(cluster: MultiNodeCluster, names: dict[str, str], marks: str, world: int,
                     after: float, box: dict, timeout: float = 300) -> None:
    """(A thread.) Wait until every rank wrote its mark, ``after`` seconds more, then kill the
    worker node of the highest rank that runs on a worker node. ``names`` maps node ids to
    node names; ``box`` gets ``rank``, ``node_id``, ``name``, ``at`` (or ``error``)."""
    try:
        deadline = time.monotonic() + timeout
        while len(os.listdir(marks)) < world:
            if time.monotonic() > deadline:
                box["error"] = f"the ranks never reached the kill epoch: {os.listdir(marks)}"
                return
            time.sleep(0.05)
        time.sleep(after)
        ranks = {}
        for r in range(world):
            with open(os.path.join(marks, f"rank{r}")) as f:
                ranks[r] = f.read()
        rank = max(r for r, nid in ranks.items() if names.get(nid, "head") != "head")
        name = names[ranks[rank]]
        box.update(rank=rank, node_id=ranks[rank], name=name, ranks=ranks, at=cluster.kill(name))
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        box["error"] = repr(exc)
