"""fd 1/2 routed once per worker process (lepton_lab/remote/_capture.py).

The router takes over fd 1/2 of its process for good, so it runs in a child Python process
here (as in a Ray worker), never in pytest's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    from lepton_lab.remote._capture import fd_capture, keep_for_process

    class Sink:
        def __init__(self):
            self.out = {"stdout": "", "stderr": ""}
        def stream(self, name, text):
            self.out[name] += text

    keep_for_process()
    os.write(1, b"before-any-cell\\n")
    cells = []
    for i in range(3):
        sink = Sink()
        with fd_capture(sink):
            os.write(1, f"cell{i}-out\\n".encode())
            os.write(2, f"cell{i}-err\\n".encode())
            os.write(1, b"split-\\xc3")          # one UTF-8 character in two writes
            os.write(1, b"\\xa9\\n")
            subprocess.run(["echo", f"child{i}"], check=True)
            if i == 0:
                os.write(1, b"x" * 300_000 + b"\\n")   # more than a pipe holds
        os.write(1, f"between-{i}\\n".encode())
        cells.append(sink.out)
    # a cell that takes fd 1 away: the next cell gets a fresh router and is still captured
    sink = Sink()
    with fd_capture(sink):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
    after = Sink()
    with fd_capture(after):
        os.write(1, b"after-dup2\\n")
    cells += [sink.out, after.out]
    with open(sys.argv[1], "w") as f:
        json.dump(cells, f)
    os.write(1, b"at-exit\\n")                 # still in the pipe when the process ends
""")


def test_fd_router_sends_each_cells_output_to_that_cell_and_the_rest_to_the_log(tmp_path):
    result = tmp_path / "cells.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(result)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = json.loads(result.read_text())
    for i, out in enumerate(cells[:3]):
        expected = f"cell{i}-out\nsplit-é\nchild{i}\n" + ("x" * 300_000 + "\n" if i == 0 else "")
        assert out["stdout"] == expected, (i, out["stdout"][:200])
        assert out["stderr"] == f"cell{i}-err\n"
    # outside cells, output goes where fd 1 went before (the worker's log), not into a cell
    assert proc.stdout.splitlines() == ["before-any-cell", "between-0", "between-1",
                                        "between-2", "at-exit"]
    assert cells[4]["stdout"] == "after-dup2\n"
    assert "lepton-sync" not in proc.stdout + proc.stderr
