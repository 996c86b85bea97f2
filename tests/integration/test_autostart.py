"""The cluster comes up in the background when a kernel loads the extension (issue 15).

Real kernels with ``LEPTON_AUTOSTART=1`` (the suite turns it off elsewhere). Where the shared
cluster runs, the kernel finds it and connects before any cell asks; with an address set,
nothing embedded starts at all.
"""

from __future__ import annotations

import os
import time

import pytest

from .conftest import KernelClient, text_of

pytestmark = pytest.mark.integration


def _kernel(**env: str) -> KernelClient:
    return KernelClient(dict(os.environ, **env))


def _py(k: KernelClient, code: str, timeout: float = 60) -> str:
    reply, msgs = k.execute(code, timeout=timeout)
    assert reply["status"] == "ok", (reply, text_of(msgs))
    return text_of(msgs)


def test_load_ext_connects_in_the_background_and_the_first_cell_needs_no_wait(cluster):
    k = _kernel(LEPTON_AUTOSTART="1")
    try:
        t0 = time.monotonic()
        _py(k, "%load_ext lepton_lab")
        load = time.monotonic() - t0
        assert load < 5.0, f"%load_ext blocked for {load:.1f} s"
        # nothing but the background start connects this kernel
        out = _py(k, "import time\nfrom lepton_lab import cluster as _c\n"
                     "_t = time.monotonic()\n"
                     "while _c.current() is None and time.monotonic() - _t < 90:\n"
                     "    time.sleep(0.1)\n"
                     "print('connected to', _c.current().address, _c.current().kind)")
        assert f"connected to {cluster.address} embedded" in out, out
        out = _py(k, "%%lepton\nimport os\nprint('ran in', os.getpid())")
        assert "ran in" in out, out
        reply, msgs = k.execute("%lepton status", timeout=60)
        shown = "".join(m["content"]["data"].get("text/plain", "") for m in msgs
                        if m["msg_type"] in ("display_data", "execute_result"))
        assert reply["status"] == "ok", reply
        assert "embedded local Ray at" in shown and "starting" not in shown, shown
    finally:
        k.stop()


def test_an_address_means_nothing_embedded_starts(tmp_path):
    home = tmp_path / "home"
    k = _kernel(LEPTON_AUTOSTART="1", LEPTON_HOME=str(home), RAY_ADDRESS="127.0.0.1:9")
    try:
        _py(k, "%load_ext lepton_lab")
        time.sleep(3)
        assert not (home / "cluster.json").exists() and not (home / "cluster.starting").exists()
        assert not (home / "cluster.log").exists()
        reply, msgs = k.execute("%%lepton\nx = 1", timeout=120)
        assert reply["status"] == "error"
        assert "cannot reach the Ray cluster at 127.0.0.1:9" in reply["evalue"], reply["evalue"]
        assert not (home / "cluster.json").exists()
    finally:
        k.stop()
