"""The kernel's warm cell worker (remote/_warm.py) on the shared real Ray cluster.

The rest of the suite runs with it off (tests/conftest.py), so that tests which ask Ray for
every CPU directly do not wait for it; here it is on, and each test gives it back.
"""

from __future__ import annotations

import threading
import time

import pytest

from lepton_lab.errors import CellTimeout

from .conftest import running_lepton_tasks, wait_for_free_cpus

pytestmark = pytest.mark.integration


@pytest.fixture
def warm(ip, monkeypatch):
    """Turn the warm worker on for ``seconds`` (a function of the test), then off again."""
    from lepton_lab.config import reset_config
    from lepton_lab.remote import _warm

    def on(seconds: float) -> None:
        monkeypatch.setenv("LEPTON_WARM_CELL_S", str(seconds))
        reset_config()

    _warm._QUIET_UNTIL, _warm._LAST_TASK = 0.0, (None, 0.0)
    yield on
    _warm.release()
    monkeypatch.setenv("LEPTON_WARM_CELL_S", "0")
    reset_config()
    _warm._QUIET_UNTIL, _warm._LAST_TASK = 0.0, (None, 0.0)
    wait_for_free_cpus(timeout=10)


def cell(ip, body: str, line: str = ""):
    res = ip.run_cell(f"%%lepton {line}\n{body}")
    return res


def pids(ip, n: int) -> list[int]:
    out = []
    for _ in range(n):
        res = cell(ip, "import os\npid = os.getpid()")
        assert res.success, res.error_in_exec
        out.append(ip.user_ns["pid"])
    return out


def warm_up(ip) -> None:
    """Two cells in a row start the worker (in the background); wait until Ray placed it.

    It starts only on CPUs free in Ray's view of the cluster, which lags by a moment behind
    work that just ended (a cell with every CPU, a worker given back): then the next cells
    try again."""
    import ray

    from lepton_lab.remote import _warm

    pids(ip, 2)
    for _ in range(10):
        if _warm._W is not None:
            break
        time.sleep(0.2)
        pids(ip, 1)
    assert _warm._W is not None, "no warm worker was started"
    ray.get(_warm._W.ready_ref, timeout=60)


def test_back_to_back_cells_share_one_warm_worker_with_a_fresh_namespace(ip, warm):
    from lepton_lab.remote import _warm
    from lepton_lab.store import get_store

    warm(30)
    warm_up(ip)
    seen = pids(ip, 3)
    info = _warm.info()
    assert info is not None and info["ready"], info
    # the two cells before run as tasks; from then on, every cell runs on the one worker
    assert seen == [info["pid"]] * 3, (seen, info)
    assert info["cells"] >= 3
    # each cell still starts from a fresh namespace, as a task does
    assert cell(ip, "left_behind = 1").success
    res = cell(ip, "had_it = 'left_behind' in globals()")
    assert res.success and ip.user_ns["had_it"] is False
    # every cell on it has its job and audit entries, as a task's has
    jobs = get_store().list_jobs(limit=7)
    assert all(j.status == "succeeded" for j in jobs)
    entries = get_store().audit_entries(job_id=jobs[0].id)
    assert sorted(e["action"] for e in entries) == ["outcome", "submit"]
    # it holds the cell's CPU while it is kept, and `%lepton status` says so
    import ray

    assert ray.available_resources().get("CPU", 0) <= ray.cluster_resources()["CPU"] - 1
    from lepton_lab.remote._status import cluster_status, format_text

    assert "warm cell worker: 1 CPU" in format_text(cluster_status(probe=False))


def test_it_is_given_back_after_the_idle_time(ip, warm):
    from lepton_lab.remote import _warm

    warm(1.5)
    warm_up(ip)
    pids(ip, 1)
    assert _warm.info() is not None
    took = wait_for_free_cpus(timeout=6)
    assert took > 0.5              # held while kept ...
    assert _warm.info() is None    # ... and given back when the time ran out


def test_other_work_gets_its_cpus_first(ip, warm):
    """A cell with other resources and a warm group each need every CPU of the cluster."""
    import ray

    from lepton_lab.remote import _warm
    from lepton_lab.remote._group import stop_group

    total = ray.cluster_resources()["CPU"]
    warm(60)
    warm_up(ip)
    assert _warm.info() is not None
    t = time.monotonic()
    res = cell(ip, "wide = 1", f"--cpus {total:g} --timeout 30")
    assert res.success, res.error_in_exec
    assert time.monotonic() - t < 10
    assert _warm.info() is None
    # right after other work, no new worker is started (no churn when the two alternate)
    pids(ip, 3)
    assert _warm.info() is None
    _warm._QUIET_UNTIL = 0.0
    warm_up(ip)
    assert _warm.info() is not None
    try:
        res = cell(ip, "import os\nrank = os.environ['RANK']", f"--workers {int(total)}")
        assert res.success, res.error_in_exec
        assert _warm.info() is None
    finally:
        stop_group()


def test_ctrl_c_kills_the_warm_worker_and_frees_its_cpus(ip, warm):
    import _thread

    from lepton_lab.remote import _warm

    warm(60)
    warm_up(ip)
    busy = pids(ip, 1)[0]
    assert busy == _warm.info()["pid"]
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    t = time.monotonic()
    res = cell(ip, "import os\nassert os.getpid() == %d\nwhile True:\n"
               "    sum(range(10000))" % busy)
    assert isinstance(res.error_in_exec, KeyboardInterrupt), res.error_in_exec
    assert time.monotonic() - t < 1.5 + 2.5
    assert _warm.info() is None
    assert wait_for_free_cpus(timeout=2) < 2
    from lepton_lab.store import get_store

    assert get_store().list_jobs(limit=1)[0].status == "cancelled"


def test_a_timeout_on_the_warm_worker_stops_the_work(ip, warm):
    from lepton_lab.remote import _warm

    warm(60)
    warm_up(ip)
    on = pids(ip, 1)[0]
    res = cell(ip, "import os, time\nassert os.getpid() == %d\nwhile True:\n"
               "    time.sleep(0.05)" % on, "--timeout 2")
    assert isinstance(res.error_in_exec, CellTimeout)
    assert _warm.info() is None
    wait_for_free_cpus(timeout=3)
    deadline = time.monotonic() + 5
    while running_lepton_tasks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_lepton_tasks()


def test_a_dead_warm_worker_is_reported_and_replaced_by_a_task(ip, warm):
    from lepton_lab.errors import WorkerDied
    from lepton_lab.remote import _warm

    warm(60)
    warm_up(ip)
    on = pids(ip, 1)[0]
    res = cell(ip, "import os, signal\nassert os.getpid() == %d\n"
               "os.kill(os.getpid(), signal.SIGKILL)" % on)
    assert isinstance(res.error_in_exec, WorkerDied), res.error_in_exec
    assert _warm.info() is None
    assert pids(ip, 1)           # the next cell runs (as a task)


def test_a_real_kernel_interrupts_its_warm_worker_and_frees_it_on_exit(cluster):
    """What a notebook sees: cells on the warm worker, a Jupyter interrupt that stops one
    within 2 s, and a shut-down kernel that leaves no CPU held."""
    import os

    from .conftest import KernelClient, text_of

    kernel = KernelClient(env=dict(os.environ, LEPTON_WARM_CELL_S="60"))
    try:
        assert kernel.execute("%load_ext lepton_lab")[0]["status"] == "ok"
        for _ in range(2):
            assert kernel.execute("%%lepton\nx = 1")[0]["status"] == "ok"
        reply, msgs = kernel.execute(
            "import ray\nfrom lepton_lab.remote import _warm\n"
            "print('warm pid', ray.get(_warm._W.ready_ref, timeout=60))")
        assert reply["status"] == "ok", text_of(msgs)
        warm_pid = int(text_of(msgs, "stdout").split()[-1])
        seen = {}

        def on_msg(m):
            if m["msg_type"] == "stream" and "started" in m["content"].get("text", "") \
                    and "t" not in seen:
                seen["t"] = time.monotonic()
                kernel.km.interrupt_kernel()

        reply, msgs = kernel.execute(
            "%%lepton\nimport os, time\nprint('started', os.getpid(), flush=True)\n"
            "for i in range(1200):\n    time.sleep(0.05)", on_msg=on_msg)
        assert "t" in seen, text_of(msgs)
        assert f"started {warm_pid}" in text_of(msgs, "stdout")   # it ran on the warm worker
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert reply["t"] - seen["t"] < 2.0
        assert wait_for_free_cpus(timeout=2.0) < 2.0
        # a new worker comes after two more cells; the kernel's exit takes it with it
        for _ in range(2):
            assert kernel.execute("%%lepton\nx = 1")[0]["status"] == "ok"
        reply, msgs = kernel.execute(
            "print('warm pid', ray.get(_warm._W.ready_ref, timeout=60))")
        assert reply["status"] == "ok", text_of(msgs)
    finally:
        kernel.stop()
    wait_for_free_cpus(timeout=10)


def test_after_a_disconnect_the_next_cells_get_a_new_worker(ip, warm):
    """`%lepton disconnect` ends the driver and its worker with it: the next cell reconnects
    and runs as a task, and a new worker follows (no wait for the idle time, as there is
    after other work)."""

    from lepton_lab.remote import _warm

    warm(60)
    warm_up(ip)
    old = pids(ip, 1)[0]
    ip.run_line_magic("lepton", "disconnect")
    assert pids(ip, 1)[0] != old                # on a task of the new connection
    warm_up(ip)
    new = pids(ip, 1)[0]
    assert new == _warm.info()["pid"] and new != old
