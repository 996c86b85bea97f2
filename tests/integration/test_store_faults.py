"""A real kernel whose LEPTON_HOME fills up while a %%lepton cell runs on the shared cluster:
the cell's values still come back, the kernel says so in one line that names the store, a
cell sent while the disk is full is refused before anything runs (its audit entry could not
be written), and once there is space again cells work without a restart."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from lepton_lab.store import Store

from .conftest import KernelClient, text_of

pytestmark = pytest.mark.integration


@pytest.fixture
def small_home(tmp_path):
    """A 2 MiB tmpfs as the kernel's LEPTON_HOME (root in CI; skipped elsewhere)."""
    mnt = tmp_path / "home"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("needs to mount a tmpfs (root in CI)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _error_of(reply: dict) -> str:
    assert reply["status"] == "error", reply
    return "\n".join(reply["traceback"])


def test_a_full_home_during_a_cell_keeps_its_values(cluster, lepton_home, small_home, tmp_path):
    env = dict(os.environ, LEPTON_HOME=str(small_home), RAY_ADDRESS=cluster.address,
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(lepton_home / "ray_auth_token"))
    env.pop("RAY_AUTH_TOKEN", None)
    gate = tmp_path / "gate"
    k = KernelClient(env)
    try:
        reply, _ = k.execute("%load_ext lepton_lab")
        assert reply["status"] == "ok", reply
        reply, _ = k.execute("%%lepton --name before-full\nx = 1", timeout=120)
        assert reply["status"] == "ok", reply

        # the cell waits for the gate; meanwhile its job is recorded, then the disk fills
        cell = ("%%lepton --name during-full\nimport os, time\n"
                f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.1)\n"
                "print('output line ' * 8000)\ny = 42")
        box: dict = {}
        runner = threading.Thread(target=lambda: box.update(r=k.execute(cell, timeout=120)))
        runner.start()
        store = Store(small_home / "state.sqlite")
        deadline = time.monotonic() + 60
        while not [j for j in store.list_jobs() if j.name == "during-full"]:
            assert time.monotonic() < deadline, "the cell's job was never recorded"
            time.sleep(0.2)
        _fill(small_home / "filler")
        gate.touch()
        runner.join(150)
        reply, msgs = box["r"]
        error = _error_of(reply)
        assert "StoreUnavailable" in error and str(small_home) in error and "full" in error
        assert len(reply["traceback"]) == 1, reply["traceback"]       # one line
        assert "output line" in text_of(msgs)                          # the output was shown
        reply, msgs = k.execute("print('y is', y)")
        assert "y is 42" in text_of(msgs)                              # the value came back

        # a cell sent while the disk is full: refused, and nothing ran
        reply, _ = k.execute("%%lepton --name while-full\nz = 1", timeout=60)
        assert "StoreUnavailable" in _error_of(reply)
        reply, msgs = k.execute("print('z' in dir())")
        assert "False" in text_of(msgs)

        # space again: the next cell works in the same kernel
        (small_home / "filler").unlink()
        reply, _ = k.execute("%%lepton --name after-full\nw = 5", timeout=120)
        assert reply["status"] == "ok", reply
        names = {j.name: j.status for j in store.list_jobs()}
        assert names["before-full"] == "succeeded" and names["after-full"] == "succeeded"
        assert "while-full" not in names
        with store._conn() as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        k.stop()
