"""%%lepton cells in a real InteractiveShell against the shared real Ray cluster."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from lepton_lab.errors import CellSyntaxError, CellTimeout, RemoteError, WorkerDied

from .conftest import running_lepton_tasks, wait_for_free_cpus

pytestmark = pytest.mark.integration


def run(ip, line: str, body: str):
    """Run a %%lepton cell exactly as a notebook would; return IPython's ExecutionResult."""
    return ip.run_cell(f"%%lepton {line}\n{body}")


def jobs(ip):
    from lepton_lab.store import get_store

    return get_store().list_jobs(limit=1000)


def test_variables_round_trip_and_only_read_names_are_sent(ip):
    ip.user_ns.update(a=20, unrelated_lock=threading.Lock())  # unpicklable, but never read
    res = run(ip, "", "import os\nb = a + 1\npid = os.getpid()")
    assert res.success, res.error_in_exec
    assert ip.user_ns["b"] == 21
    import os

    assert ip.user_ns["pid"] != os.getpid()  # it really ran in another process


def test_tensors_and_modules_come_back(ip):
    res = run(ip, "", "import torch\nm = torch.nn.Linear(3, 2)\nw = m.weight.detach() * 2")
    assert res.success, res.error_in_exec
    import torch

    assert isinstance(ip.user_ns["m"], torch.nn.Linear)
    assert torch.allclose(ip.user_ns["w"], ip.user_ns["m"].weight.detach() * 2)


def test_out_and_no_pull(ip):
    ip.user_ns.pop("p1", None), ip.user_ns.pop("p2", None)
    assert run(ip, "--out p1", "p1 = 1\np2 = 2").success
    assert ip.user_ns["p1"] == 1 and "p2" not in ip.user_ns
    assert run(ip, "--no-pull", "p2 = 3").success
    assert "p2" not in ip.user_ns


def test_env_reaches_the_cell_and_secret_names_are_refused(ip):
    assert run(ip, "--env LEPTON_TEST_FLAG=on", "import os\nflag = os.environ['LEPTON_TEST_FLAG']"
               ).success
    assert ip.user_ns["flag"] == "on"
    before = len(jobs(ip))
    res = run(ip, "--env DB_PASSWORD=hunter2", "x = 1")
    from IPython.core.error import UsageError

    assert isinstance(res.error_in_exec, UsageError)
    assert "hunter2" not in str(res.error_in_exec)
    assert len(jobs(ip)) == before


def test_unpicklable_variable_names_it_and_sends_nothing(ip):
    ip.user_ns["lk"] = threading.Lock()
    before = len(jobs(ip))
    res = run(ip, "", "print(lk)")
    err = res.error_in_exec
    from IPython.core.error import UsageError

    assert isinstance(err, UsageError)  # one line in the notebook, no traceback
    assert "'lk'" in str(err) and "lock" in str(err).lower()
    assert len(jobs(ip)) == before  # no job was submitted


def test_syntax_error_is_local(ip):
    before = len(jobs(ip))
    res = run(ip, "", "a = 1\nb = (\nc = 3")
    assert isinstance(res.error_in_exec, CellSyntaxError)
    assert len(jobs(ip)) == before


def test_remote_traceback_points_at_cell_lines(ip):
    res = run(ip, "", "x1 = 1\nx2 = 2\nraise ValueError('bad value')")
    err = res.error_in_exec
    assert isinstance(err, RemoteError)
    assert err.ename == "ValueError" and err.evalue == "bad value"
    rendered = "\n".join(err._render_traceback_())
    # the magic line is cell line 1, so the raise is on line 4 of the notebook cell
    assert "Cell line 4" in rendered and "raise ValueError('bad value')" in rendered
    assert "_executor.py" not in rendered  # Lepton's own frames are trimmed


def test_infeasible_request_fails_fast(ip):
    t = time.monotonic()
    res = run(ip, "--gpus 64", "x = 1")
    from IPython.core.error import UsageError

    assert isinstance(res.error_in_exec, UsageError)  # an InfeasibleRequest, shown as one line
    assert "--gpus 64 cannot be scheduled" in str(res.error_in_exec)
    assert time.monotonic() - t < 10


def test_cluster_workers_defer_the_slow_import(ip):
    """The embedded cluster's processes start with lepton_lab/_site on PYTHONPATH, so a worker
    that imported Ray has not built the RFC 3987 parser (lepton_lab/_lazyimport.py)."""
    import importlib.util

    if importlib.util.find_spec("rfc3987_syntax") is None:
        pytest.skip("rfc3987-syntax is not installed here")
    res = run(ip, "", "import sys\nimport ray\nlark = 'lark' in sys.modules\n"
                      "deferred = getattr(sys.modules.get('rfc3987_syntax'), "
                      "'__lepton_deferred__', False)")
    assert res.success, res.error_in_exec
    assert (ip.user_ns["lark"], ip.user_ns["deferred"]) == (False, True)


def test_a_long_silent_cell_is_not_said_to_wait_for_resources(ip, capsys):
    # it holds every CPU of the cluster itself: before the worker said it runs, the kernel
    # saw 0 CPUs free after 5 s and printed "waiting for resources"
    wait_for_free_cpus(timeout=30)
    capsys.readouterr()
    res = run(ip, "--cpus 2", "import time\ntime.sleep(6.5)\ndone = True")
    assert res.success, res.error_in_exec
    assert ip.user_ns["done"] is True
    assert "waiting for resources" not in capsys.readouterr().err


def test_timeout_cancels_and_frees_resources(ip):
    t = time.monotonic()
    res = run(ip, "--timeout 2", "import time\nwhile True:\n    time.sleep(0.05)")
    assert isinstance(res.error_in_exec, CellTimeout)
    assert time.monotonic() - t < 2 + 3
    wait_for_free_cpus(timeout=3)
    deadline = time.monotonic() + 5
    while running_lepton_tasks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_lepton_tasks()
    assert jobs(ip)[0].status == "timeout"


def test_keyboard_interrupt_cancels_and_frees_resources(ip):
    import _thread

    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    t = time.monotonic()
    res = run(ip, "", "import time\nfor i in range(600):\n    time.sleep(0.1)")
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - t < 1.5 + 2.0
    assert wait_for_free_cpus(timeout=2) < 2
    assert jobs(ip)[0].status == "cancelled"


def test_cancel_from_another_session_stops_the_remote_work(ip):
    # the sidebar and `lepton cancel` only record the cancellation; the kernel running the
    # cell notices it, stops the task and frees its CPU
    from lepton_lab.errors import JobCancelled
    from lepton_lab.remote._jobs import cancel

    def cancel_when_running() -> None:
        from lepton_lab.store import get_store

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [j for j in get_store().list_jobs(status="running", limit=20)
                     if j.name == "cancel-me"]
            if found:
                time.sleep(4.0)                 # the task has started and printed by then
                cancel("cancel-me")
                return
            time.sleep(0.1)

    threading.Thread(target=cancel_when_running, daemon=True).start()
    t = time.monotonic()
    res = run(ip, "--name cancel-me", "import time\nprint('started', flush=True)\n"
              "for i in range(600):\n    time.sleep(0.1)")
    assert isinstance(res.error_in_exec, JobCancelled), res.error_in_exec
    assert time.monotonic() - t < 30
    wait_for_free_cpus(timeout=5)
    job = [j for j in jobs(ip) if j.name == "cancel-me"][0]
    assert job.status == "cancelled" and "started" in (job.log or "")


def test_worker_death_is_reported(ip):
    res = run(ip, "", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    err = res.error_in_exec
    assert isinstance(err, WorkerDied), err
    assert "died" in str(err)


def test_audit_entries(ip):
    from lepton_lab.store import get_store

    body = "audit_probe = 7"
    assert run(ip, "--cpus 0.5 --name audited", body).success
    job = get_store().find_job("audited")
    entries = get_store().audit_entries(job_id=job.id)
    actions = sorted(e["action"] for e in entries)
    assert actions == ["outcome", "submit"]
    submit = next(e for e in entries if e["action"] == "submit")
    outcome = next(e for e in entries if e["action"] == "outcome")
    assert submit["user"] and submit["ts"] <= outcome["ts"]
    assert submit["source_hash"] == hashlib.sha256(body.encode()).hexdigest()
    assert submit["resources"]["cpus"] == 0.5
    assert submit["cluster"] == job.cluster
    assert outcome["outcome"] == "succeeded"


def test_live_progress_and_display_events_reach_the_sink(cluster):
    """The core streams each event as it happens (the kernel-level test checks timing)."""
    from lepton_lab import CellSpec, run_cell
    from lepton_lab.remote import Sink

    seen = []

    class Recorder(Sink):
        def stream(self, name, text):
            seen.append(("stream", time.monotonic(), text))

        def display(self, data, metadata, display_id, update):
            seen.append(("display", time.monotonic(), data))

        def progress(self, key, n, total, desc, rate):
            seen.append(("progress", time.monotonic(), (n, total)))

    body = ("import time\nfor i in lepton.progress(range(5), desc='steps'):\n    time.sleep(0.2)\n"
            "display({'text/html': '<b>done</b>', 'text/plain': 'done'}, raw=True)\n"
            "print('end')")
    end = None
    outcome = run_cell(body, {}, CellSpec(), Recorder())
    end = time.monotonic()
    from lepton_lab.store import get_store

    # the job record keeps the latest progress, for the sidebar and other sessions
    assert get_store().get_job(outcome.job_id).progress == {
        "n": 5, "total": 5, "desc": "steps", "rate": pytest.approx(5, rel=0.9)}
    kinds = [k for k, _, _ in seen]
    assert "progress" in kinds and "display" in kinds
    assert any(p == (5, 5) for k, _, p in seen if k == "progress")
    html = [d for k, _, d in seen if k == "display"]
    assert html[0]["text/html"] == "<b>done</b>"
    first_progress = next(t for k, t, _ in seen if k == "progress")
    assert end - first_progress > 0.5  # progress arrived while the cell was still running
