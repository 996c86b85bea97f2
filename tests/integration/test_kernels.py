"""Real IPython kernels (jupyter_client) against the shared cluster: what a notebook sees."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .conftest import running_lepton_tasks, text_of, wait_for_free_cpus

pytestmark = pytest.mark.integration


def test_output_streams_live_and_rich_output_arrives(kernel):
    reply, _ = kernel.execute("%load_ext lepton_lab")
    assert reply["status"] == "ok"
    code = ("%%lepton\n"
            "import time\n"
            "print('first', flush=True)\n"
            "time.sleep(3)\n"
            "display({'text/html': '<i>rich</i>', 'text/plain': 'rich'}, raw=True)\n"
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3]); plt.title('remote figure')\n"
            "print('second')\n")
    reply, msgs = kernel.execute(code)
    assert reply["status"] == "ok", reply
    first = next(m["t"] for m in msgs if m["msg_type"] == "stream" and "first" in m["content"]["text"])
    assert reply["t"] - first > 2.5, "output arrived only at the end of the cell"
    data = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert any(d.get("text/html") == "<i>rich</i>" for d in data)
    assert any("image/png" in d for d in data), "the matplotlib figure did not come back"
    assert "second" in text_of(msgs, "stdout")


def test_interrupt_stops_remote_work_within_2s(kernel):
    kernel.execute("%load_ext lepton_lab")
    seen = {}

    def on_msg(m):
        if m["msg_type"] == "stream" and "started" in m["content"].get("text", "") and "t" not in seen:
            seen["t"] = time.monotonic()
            kernel.km.interrupt_kernel()

    reply, msgs = kernel.execute("%%lepton\nimport time\nprint('started', flush=True)\n"
                                 "for i in range(1200):\n    time.sleep(0.05)", on_msg=on_msg)
    assert "t" in seen, text_of(msgs)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert reply["t"] - seen["t"] < 2.0
    assert wait_for_free_cpus(timeout=2.0) < 2.0
    assert not running_lepton_tasks()


def test_detach_and_attach_across_kernel_restart(kernel):
    kernel.execute("%load_ext lepton_lab")
    reply, msgs = kernel.execute(
        "%%lepton --detach --name across-restart\n"
        "import time\nfor i in range(3):\n    print('tick', i, flush=True); time.sleep(1)\n"
        "answer = 6 * 7\n")
    assert reply["status"] == "ok", reply
    assert "detached" in text_of(msgs)
    kernel.execute("x = 1")  # the user moves on
    # restart the kernel: the job lives on the cluster, not in the kernel
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    kernel.execute("%load_ext lepton_lab")
    reply, msgs = kernel.execute("%lepton attach across-restart")
    assert reply["status"] == "ok", reply
    out = text_of(msgs)
    assert "tick 0" in out and "tick 2" in out  # the whole output is replayed
    reply, msgs = kernel.execute("print(answer)")
    assert text_of(msgs).strip() == "42"
    reply, msgs = kernel.execute("%lepton jobs")
    assert "across-restart" in text_of(msgs) and "succeeded" in text_of(msgs)


def test_detached_output_reaches_the_launching_cell_after_moving_on(kernel):
    kernel.execute("%load_ext lepton_lab")
    reply, _ = kernel.execute("%%lepton --detach\nimport time\ntime.sleep(2)\n"
                              "print('late line from the job', flush=True)")
    assert reply["status"] == "ok"
    # the next cells run while the job is still going; the job's output must still land in
    # the first cell's Output widget (as comm state updates on the widget)
    found = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not found:
        try:
            m = kernel.kc.get_iopub_msg(timeout=0.5)
        except Exception:  # queue.Empty
            continue
        if m["msg_type"] == "comm_msg":
            state = m["content"].get("data", {}).get("state", {})
            outs = state.get("outputs") or []
            found = any("late line from the job" in (o.get("text") or "") for o in outs)
    assert found, "the detached job's output did not reach its cell's Output widget"


def test_cancel_a_detached_job_frees_resources(kernel):
    kernel.execute("%load_ext lepton_lab")
    reply, msgs = kernel.execute("%%lepton --detach --name to-cancel\nimport time\n"
                                 "time.sleep(300)")
    assert reply["status"] == "ok"
    time.sleep(1.0)
    t = time.monotonic()
    reply, msgs = kernel.execute("%lepton cancel to-cancel")
    assert "cancelled" in text_of(msgs), text_of(msgs)
    assert time.monotonic() - t < 5
    wait_for_free_cpus(timeout=3)


def test_status_shows_the_cluster(kernel, cluster):
    kernel.execute("%load_ext lepton_lab")
    reply, msgs = kernel.execute("%lepton status")
    assert reply["status"] == "ok", reply
    data = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    text = data[0]["text/plain"]
    assert cluster.address in text and "CPUs" in text and "dashboard" in text
    assert "<table>" in data[0]["text/html"]


def test_magic_help_explains_with_examples(kernel):
    kernel.execute("%load_ext lepton_lab")
    reply = kernel.kc.inspect("%lepton", cursor_pos=len("%lepton"), detail_level=0, reply=True,
                              timeout=30)
    doc = reply["content"]["data"]["text/plain"]
    for flag in ("--cpus", "--gpus", "--memory", "--workers", "--timeout", "--name", "--detach",
                 "--out", "--no-pull", "--env"):
        assert flag in doc
    assert "Examples" in doc and "%lepton attach" in doc


def test_kernel_spec_preloads_the_extension(cluster, tmp_path):
    """kernels/lepton/kernel.json starts a kernel with the magics already loaded."""
    import json
    import os
    import shutil
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    from .conftest import REPO

    spec_dir = tmp_path / "kernels" / "lepton"
    shutil.copytree(REPO / "kernels" / "lepton", spec_dir)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["argv"][0] = sys.executable  # the test's interpreter, as an install would resolve it
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    assert spec["display_name"] == "Python 3 (Lepton)"
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="lepton", kernel_spec_manager=ksm)
    km.start_kernel(env=dict(os.environ))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("%%lepton\nv = 5", timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_audit_survives_a_kernel_killed_right_after_the_cell(kernel):
    """The job and its audit entries are committed before the cell's outcome is shown (the
    submission is recorded while the task runs, the outcome before the reply): a kernel lost
    at once after the reply loses neither."""
    from lepton_lab.store import get_store

    kernel.execute("%load_ext lepton_lab")
    reply, msgs = kernel.execute("%%lepton --name killed-after\nanswer = 6 * 7\nprint(answer)")
    assert reply["status"] == "ok", reply
    assert "42" in text_of(msgs)
    os.kill(kernel.km.provisioner.pid, signal.SIGKILL)      # no clean exit, no atexit
    job = get_store().find_job("killed-after")
    assert job.status == "succeeded"
    actions = sorted(e["action"] for e in get_store().audit_entries(job_id=job.id))
    assert actions == ["outcome", "submit"]
    assert "42" in (get_store().get_job(job.id).log or "")


def test_ten_detached_jobs_are_all_attached_after_a_kernel_restart(kernel):
    """The attach rate over N = 10 detached jobs across a kernel restart (docs/reliability.md):
    every job's whole output is replayed and its value pulled into the new kernel."""
    from tests._reliability import record

    n = 10
    kernel.execute("%load_ext lepton_lab")
    for i in range(n):
        reply, msgs = kernel.execute(
            f"%%lepton --detach --cpus 0.1 --name many-{i}\n"
            f"import time\nprint('job {i} starts', flush=True)\ntime.sleep(3)\n"
            f"print('job {i} ends', flush=True)\nvalue_{i} = {i} * {i}\n", timeout=120)
        assert reply["status"] == "ok", (reply, text_of(msgs))
    kernel.km.restart_kernel(now=True)          # while the jobs run
    kernel.kc.wait_for_ready(timeout=60)
    kernel.execute("%load_ext lepton_lab")
    attached, failures = 0, []
    for i in range(n):
        reply, msgs = kernel.execute(f"%lepton attach many-{i}", timeout=120)
        out = text_of(msgs)
        ok = reply["status"] == "ok" and f"job {i} starts" in out and f"job {i} ends" in out
        reply, msgs = kernel.execute(f"print(value_{i})")
        if ok and text_of(msgs).strip() == str(i * i):
            attached += 1
        else:
            failures.append((i, reply.get("evalue"), out[-300:]))
    record("kernel_restart_detached", tried=n, survived=attached, data_lost=n - attached)
    assert attached == n, failures
