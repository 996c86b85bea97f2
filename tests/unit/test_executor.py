"""The cluster side of a cell, run in-process without Ray (lepton_lab/remote/_executor.py)."""

from __future__ import annotations

import base64
import os
import threading
import time

import cloudpickle
import pytest

from lepton_lab.remote._analysis import analyze
from lepton_lab.remote._executor import (
    CellThread,
    Emitter,
    display,
    execute,
    mimebundle,
    new_namespace,
    stream_cell,
)
from lepton_lab.remote._runner import build_payload
from lepton_lab.remote._spec import CellSpec
from lepton_lab.remote._values import pack_values, unpack_values

DEFAULT_SPEC = CellSpec()


def payload_for(src: str, spec: CellSpec = DEFAULT_SPEC) -> dict:
    return build_payload(analyze(src), spec, {})


def run(src: str, ns: dict | None = None, spec: CellSpec = DEFAULT_SPEC):
    ns = new_namespace() if ns is None else ns
    emitter = Emitter()
    result = execute(payload_for(src, spec), ns, emitter)
    emitter.finish()
    return result, emitter.drain(0.0), ns


def streams(events, name: str = "stdout") -> str:
    return "".join(e[2] for e in events if e[0] == "stream" and e[1] == name)


def displays(events) -> list[dict]:
    return [e[1] for e in events if e[0] == "display"]


def values(result) -> dict:
    skipped = dict(result.get("skipped") or {})
    return unpack_values(result["values"], skipped)


# -- output ---------------------------------------------------------------------------------
def test_print_goes_to_stdout_and_stderr_events():
    result, events, _ = run("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n"
                            "print('again')\n")
    assert result["status"] == "ok"
    assert streams(events, "stdout") == "hello\nagain\n"
    assert streams(events, "stderr") == "oops\n"


def test_fd_level_writes_and_subprocess_output_are_captured():
    result, events, _ = run("import os, subprocess\n"
                            "os.write(1, b'fd-out\\n')\n"
                            "os.write(2, b'fd-err\\n')\n"
                            "subprocess.run(['echo', 'from-child'], check=True)\n")
    assert result["status"] == "ok"
    assert "fd-out\n" in streams(events, "stdout")
    assert "from-child\n" in streams(events, "stdout")
    assert "fd-err\n" in streams(events, "stderr")


def test_last_expression_is_displayed_as_text_plain():
    result, events, ns = run("x = 21\nx * 2\n")
    assert displays(events) == [{"text/plain": "42"}]
    assert ns["_"] == 42
    assert result["status"] == "ok"


@pytest.mark.parametrize("src", ["None\n", "print('p')\n", "x = 1\n", "for i in range(2):\n"
                                 "    i\n"])
def test_nothing_displayed_without_a_value(src):
    _, events, _ = run(src)
    assert displays(events) == []


def test_rich_repr_gives_html_and_plain():
    src = ("class Rich:\n"
           "    def _repr_html_(self):\n"
           "        return '<b>rich</b>'\n"
           "    def __repr__(self):\n"
           "        return 'Rich()'\n"
           "Rich()\n")
    _, events, _ = run(src)
    (data,) = displays(events)
    assert data == {"text/html": "<b>rich</b>", "text/plain": "Rich()"}


def test_display_function_inside_the_cell():
    _, events, _ = run("display(1, 'two')\nprint('after')\n")
    assert displays(events) == [{"text/plain": "1"}, {"text/plain": "'two'"}]
    assert streams(events) == "after\n"


def test_display_outside_a_cell_prints_repr(capsys):
    display([1, 2])
    assert capsys.readouterr().out == "[1, 2]\n"


def test_mimebundle_protocol_variants():
    class PNG:
        def _repr_png_(self):
            return b"\x89PNGdata"

    class Bundle:
        def _repr_mimebundle_(self):
            return {"text/markdown": "**b**"}, {"text/markdown": {"k": 1}}

    class Broken:
        def _repr_html_(self):
            raise RuntimeError("no html today")

    data, _ = mimebundle(PNG())
    assert base64.b64decode(data["image/png"]) == b"\x89PNGdata"
    data, md = mimebundle(Bundle())
    assert data["text/markdown"] == "**b**" and md == {"text/markdown": {"k": 1}}
    data, _ = mimebundle(Broken())
    assert set(data) == {"text/plain"}
    data, _ = mimebundle(PNG)            # a class: only its repr, not unbound methods
    assert set(data) == {"text/plain"}


def _pngs(events) -> list[bytes]:
    return [base64.b64decode(d["image/png"]) for d in displays(events) if "image/png" in d]


def test_matplotlib_figure_becomes_one_png(monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")   # restored after; the cell switches backend
    result, events, _ = run("import matplotlib.pyplot as plt\n"
                            "_ = plt.plot([1, 3, 2])\n")
    assert result["status"] == "ok"
    pngs = _pngs(events)
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []            # closed after being shown, as the inline backend


def test_matplotlib_show_and_figure_value(monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _, events, _ = run("import matplotlib.pyplot as plt\n"
                       "plt.plot([1, 2])\n"
                       "plt.show()\n"
                       "print('between')\n")
    assert len(_pngs(events)) == 1
    kinds = [e[0] for e in events]
    assert kinds.index("display") < kinds.index("stream")  # shown at plt.show(), in order
    _, events, _ = run("from matplotlib.figure import Figure\n"
                       "fig = Figure()\n"
                       "fig.add_subplot().plot([0, 1])\n"
                       "fig\n")
    pngs = _pngs(events)
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG")


# -- errors ---------------------------------------------------------------------------------
def test_error_traceback_uses_cell_line_numbers():
    result, events, _ = run("a = 1\nprint('before')\nraise ValueError('boom')\n")
    assert result["status"] == "error"
    err = result["error"]
    assert (err["ename"], err["evalue"]) == ("ValueError", "boom")
    text = "".join(err["traceback"])
    # body line 3 is notebook cell line 4 (line 1 is the %%lepton line)
    assert "Cell line 4, in <module>" in text
    assert "raise ValueError('boom')" in text
    assert "_executor.py" not in text          # no frames of ours
    assert "values" not in result
    assert streams(events) == "before\n"


def test_error_inside_a_function_and_in_the_last_expression():
    result, _, _ = run("def f():\n    return 1 / 0\n\nf()\n")
    text = "".join(result["error"]["traceback"])
    assert "Cell line 3, in f" in text and "Cell line 5, in <module>" in text
    assert "return 1 / 0" in text
    result, _, _ = run("x = 1\nx / 0\n")
    assert result["error"]["ename"] == "ZeroDivisionError"
    assert "Cell line 3" in "".join(result["error"]["traceback"])


def test_system_exit_is_a_cell_error_not_an_exit():
    result, _, _ = run("raise SystemExit(3)\n")
    assert result["status"] == "error" and result["error"]["ename"] == "SystemExit"


# -- values ---------------------------------------------------------------------------------
def test_assigned_values_come_back():
    result, _, _ = run("import json\na = 1\nb = {'k': [1, 2]}\n__hidden = 3\n")
    got = values(result)
    assert got["a"] == 1 and got["b"] == {"k": [1, 2]}
    assert result["values"]["json"] == ("module", "json")
    assert got["json"] is __import__("json")
    assert "__hidden" not in result["values"]


def test_out_and_no_pull():
    result, _, _ = run("a = 1\nb = 2\n", spec=CellSpec(out=("b",)))
    assert set(result["values"]) == {"b"}
    result, _, ns = run("a = 1\n", spec=CellSpec(pull=False))
    assert "values" not in result and ns["a"] == 1


def test_unpicklable_values_are_skipped_not_fatal():
    result, _, _ = run("import threading\nlock = threading.Lock()\ngen = (i for i in [1])\n"
                       "ok = 'fine'\n")
    assert result["status"] == "ok"
    assert set(result["skipped"]) == {"lock", "gen"}
    assert "cannot be pickled" in result["skipped"]["lock"]
    assert values(result)["ok"] == "fine"


def test_pack_values_ignores_missing_names():
    vals, skipped = pack_values({"a": 1}, ["a", "not_there", "__builtins__"])
    assert set(vals) == {"a"} and skipped == {}


def test_torch_values_come_back_on_cpu():
    torch = pytest.importorskip("torch")
    ns = {"t": torch.arange(6.0).reshape(2, 3), "m": torch.nn.Linear(3, 2)}
    vals, skipped = pack_values(ns, ["t", "m"])
    assert skipped == {}
    t = cloudpickle.loads(vals["t"][1])
    m = cloudpickle.loads(vals["m"][1])
    assert t.device.type == "cpu" and torch.equal(t, ns["t"])
    assert t.data_ptr() != ns["t"].data_ptr()
    assert torch.equal(m.weight, ns["m"].weight) and m.weight.device.type == "cpu"


def test_env_is_set_for_the_cell_and_restored():
    name = "LEPTON_UNIT_TEST_VAR"
    assert name not in os.environ
    result, _, _ = run(f"import os\nseen = os.environ['{name}']\n",
                       spec=CellSpec(env=((name, "v4lue"),)))
    assert values(result)["seen"] == "v4lue"
    assert name not in os.environ


# -- the cell thread ------------------------------------------------------------------------
def _wait_busy(runner: CellThread, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not runner.busy:
        assert time.monotonic() < deadline, "the cell never started"
        time.sleep(0.01)


def test_interrupt_stops_a_busy_loop_within_a_second():
    runner = CellThread()
    try:
        assert runner.interrupt() is False          # nothing running: nothing to interrupt
        fut = runner.submit(lambda: execute(payload_for("while True:\n    pass\n"),
                                            new_namespace(), Emitter()))
        _wait_busy(runner)
        time.sleep(0.1)
        start = time.monotonic()
        assert runner.interrupt() is True
        result = fut.result(timeout=1.0)
        assert time.monotonic() - start < 1.0
        assert result["status"] == "interrupted"
        # the same thread runs the next cell
        nxt = runner.submit(lambda: execute(payload_for("y = 2\n"), new_namespace(), Emitter()))
        assert nxt.result(timeout=5)["status"] == "ok"
        assert runner.alive
    finally:
        runner.stop()


def test_thread_local_state_persists_between_cells():
    runner = CellThread()
    try:
        ns = new_namespace()
        src1 = "import threading\nthreading.current_thread().lepton_mark = 'kept'\n"
        src2 = "import threading\nmark = threading.current_thread().lepton_mark\n"
        runner.submit(lambda: execute(payload_for(src1), ns, Emitter())).result(timeout=5)
        res = runner.submit(lambda: execute(payload_for(src2), ns, Emitter())).result(timeout=5)
        assert values(res)["mark"] == "kept"
    finally:
        runner.stop()


# -- streaming ------------------------------------------------------------------------------
def collect(src: str, runner: CellThread, ns: dict | None = None, interval: float | None = None):
    payload = payload_for(src)
    if interval is not None:
        payload["interval"] = interval
    batches = list(stream_cell(payload, new_namespace() if ns is None else ns, runner, rank=3))
    return batches


def test_stream_cell_ends_with_done_and_keeps_order():
    runner = CellThread()
    try:
        batches = collect("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.15)\n"
                          "x = 5\n", runner)
    finally:
        runner.stop()
    assert all(batches), "an empty batch was yielded"
    events = [e for b in batches for e in b]
    assert events[-1][0] == "done" and [e[0] for e in events].count("done") == 1
    result = events[-1][1]
    assert result["status"] == "ok" and result["rank"] == 3
    assert values(result)["x"] == 5
    assert streams(events) == "0\n1\n2\n"
    assert len(batches) >= 2, "output was not streamed while the cell ran"


def test_stream_cell_never_loses_the_last_output():
    # regression: output written just before the cell ends must reach the kernel
    runner = CellThread()
    try:
        for i in range(40):
            src = (f"print('line-{i}')\n" if i % 2 else
                   f"import os\nos.write(1, b'fd-line-{i}\\n')\n")
            events = [e for b in collect(src, runner, interval=0.0 if i % 3 else 1.0)
                      for e in b]
            expected = f"line-{i}\n" if i % 2 else f"fd-line-{i}\n"
            assert streams(events) == expected, f"iteration {i}: {events!r}"
            assert events[-1][0] == "done"
        events = [e for b in collect("import time\nprint('first')\ntime.sleep(0.3)\n"
                                     "print('last', end='')\n", runner) for e in b]
        assert streams(events) == "first\nlast"
    finally:
        runner.stop()


def test_stream_cell_slow_consumer_gets_the_output_printed_at_the_end():
    # The generator is suspended while its consumer handles a batch; the cell can print its
    # last line and finish in that gap. That line must still come in the final batch.
    runner = CellThread()
    try:
        payload = payload_for("import time\nprint('first')\ntime.sleep(0.1)\nprint('last')\n"
                              "'value'\n")
        payload["interval"] = 0.0
        events: list = []
        for batch in stream_cell(payload, new_namespace(), runner):
            events += batch
            time.sleep(0.4)                    # a slow consumer (network, busy kernel)
    finally:
        runner.stop()
    assert streams(events) == "first\nlast\n"
    assert displays(events) == [{"text/plain": "'value'"}]
    assert events[-1][0] == "done"


def test_stream_cell_error_result_keeps_prior_output():
    runner = CellThread()
    try:
        events = [e for b in collect("print('partial')\nraise KeyError('k')\n", runner)
                  for e in b]
    finally:
        runner.stop()
    assert streams(events) == "partial\n"
    assert events[-1][1]["status"] == "error"
    assert events[-1][1]["error"]["ename"] == "KeyError"


def test_stream_cell_interrupted_mid_stream():
    runner = CellThread()
    try:
        gen = stream_cell(payload_for("print('started')\nwhile True:\n    pass\n"),
                          new_namespace(), runner)
        events: list = []
        interrupted_at = None
        for batch in gen:
            events += batch
            if interrupted_at is None and "started" in streams(events):
                interrupted_at = time.monotonic()
                threading.Timer(0.05, runner.interrupt).start()
        assert interrupted_at is not None
        assert time.monotonic() - interrupted_at < 1.0
        assert events[-1][0] == "done" and events[-1][1]["status"] == "interrupted"
    finally:
        runner.stop()


def test_value_assigned_through_global_comes_back():
    result, _, ns = run("def bump():\n    global counter\n    counter = 5\nbump()\n")
    assert ns["counter"] == 5                           # it was set on the cluster side
    assert values(result).get("counter") == 5


def test_a_silent_cell_says_once_that_it_runs_and_a_quick_one_does_not():
    """The kernel tells "waiting for resources" from "running quietly" by this event."""
    runner = CellThread()
    try:
        silent = [e for b in collect("import time\ntime.sleep(1.6)", runner) for e in b]
        assert [e for e in silent if e[0] == "running"] == [("running",)]
        quick = [e for b in collect("x = 1", runner) for e in b]
        assert not [e for e in quick if e[0] == "running"]
        talky = [e for b in collect("import time\nprint('hi', flush=True)\ntime.sleep(1.6)",
                                    runner) for e in b]
        assert not [e for e in talky if e[0] == "running"]      # its output already said so
    finally:
        runner.stop()
