"""bench/dispatch.py's ``tls`` part (bench/_tls_part.py) without any cluster: it is a part that
``--parts tls`` runs and the default run does not, and its summary and table compute the
TLS/plain ratios from the samples."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def dispatch(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("dispatch", "_tls_part"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import dispatch

    return dispatch


def _fake_parts(dispatch, monkeypatch, tls_result):
    called = []

    def fake(name, value=None):
        def run(*a, **k):
            called.append(name)
            return value
        return run

    monkeypatch.setattr(dispatch, "part4", fake("cold"))
    monkeypatch.setattr(dispatch, "part4b", fake("coldbg"))
    monkeypatch.setattr(dispatch, "warm", fake("warm"))
    monkeypatch.setattr(dispatch, "part_tls", fake("tls", tls_result))
    return called


def test_tls_is_a_part_only_when_asked_for(dispatch, monkeypatch, capsys):
    import _tls_part

    samples = {_tls_part.KINDS["trivial_cell"]: {"plain": [0.010, 0.020, 0.030],
                                                 "TLS": [0.030, 0.040, 0.050]}}
    result = {"samples": samples, "summary": _tls_part.summarize_tls(samples),
              "cluster_start_s": {"plain": 20.0, "TLS": 22.0}, "leftover_processes": {}}
    called = _fake_parts(dispatch, monkeypatch, result)
    assert "tls" in dispatch.PARTS
    assert dispatch.main([]) == 0
    assert sorted(called) == ["cold", "coldbg", "warm"]          # the default run is unchanged
    called.clear()
    capsys.readouterr()
    assert dispatch.main(["--parts", "tls", "--quick"]) == 0
    assert called == ["tls"]
    text = capsys.readouterr().out
    assert "## TLS vs plain" in text
    assert "| trivial %%lepton cell (z = 1) | 3/3" in text and "| 2.00x" in text
    with pytest.raises(SystemExit):
        dispatch.main(["--parts", "tsl"])                         # a typo is an error


def test_summary_ratio_and_percentiles(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _tls_part

    rows = _tls_part.summarize_tls({
        "trivial": {"plain": [0.004, 0.001, 0.002, 0.003, 0.005],
                    "TLS": [0.006, 0.003, 0.009, 0.012, 0.015]},
        "64 MiB": {"plain": [0.2] * 3, "TLS": [0.5] * 3},
        "only plain": {"plain": [0.1], "TLS": []},
    })
    trivial, big, broken = rows
    assert trivial["n_plain"] == trivial["n_tls"] == 5
    assert trivial["plain_p50"] == pytest.approx(0.003)
    assert trivial["tls_p50"] == pytest.approx(0.009)
    assert trivial["plain_p90"] == pytest.approx(0.0046)        # linear interpolation
    assert trivial["ratio_p50"] == pytest.approx(3.0)
    assert big["ratio_p50"] == pytest.approx(2.5)
    assert math.isnan(broken["ratio_p50"]) and broken["n_tls"] == 0
    text = _tls_part.tls_table(rows)
    assert "| 3.00x" in text and "| 2.50x" in text
    assert "| only plain" in text and "| -" in text
    lines = _tls_part.tls_report({"summary": rows, "error": "TimeoutError: x",
                                  "leftover_processes": {"TLS": {"live": ["123 raylet"]}}},
                                 {"tls part: trivial rounds": {"wall_s": 10.0, "own_cores": 1.5,
                                                               "foreign_cores": 0.25}})
    joined = "\n".join(lines)
    assert "the TLS part failed: TimeoutError: x" in joined
    assert "other processes 0.25 cores" in joined
    assert "1 live process(es)" in joined
