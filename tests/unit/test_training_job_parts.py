"""Kernel-side pieces of %%lepton train / tune that need no cluster: flags, specs, the monitor,
the live view, splitting a tune cell, resolving --resume-from."""

from __future__ import annotations

import pytest

from lepton_lab.errors import LeptonUsageError
from lepton_lab.remote._monitor import TrainMonitor


def _payload(rank, samples, seconds, points=(), **kw):
    return dict({"rank": rank, "world": 3, "points": list(points), "samples": samples,
                 "seconds": seconds}, **kw)


def test_monitor_throughput_stragglers_and_eta():
    mon = TrainMonitor()
    for _ in range(3):
        mon.add(_payload(0, 100, 1.0, [[1, 0.5, {"loss": 1.0}]], epochs=2))
        mon.add(_payload(1, 95, 1.0))
        mon.add(_payload(2, 40, 1.0))          # 2.5x slower than the median
    assert mon.rates() == {0: 100.0, 1: 95.0, 2: 40.0}
    assert mon.stragglers() == [2]
    assert mon.fraction == pytest.approx(0.25) and mon.eta() is not None
    assert "stragglers: rank 2" in mon.summary_line()
    assert mon.series()["loss"] == ([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])


def test_monitor_notes_a_restart_once():
    mon = TrainMonitor()
    mon.add(_payload(0, 1, 1.0, attempt=1))
    mon.add(_payload(0, 1, 1.0, attempt=2))
    mon.add(_payload(1, 1, 1.0, attempt=2))
    assert [w for w in mon.warnings if "restarted" in w] == [mon.warnings[0]]


def test_curves_render_to_png():
    from lepton_lab.notebook._train_view import rank_table, render_curves

    mon = TrainMonitor()
    assert render_curves(mon) is None
    mon.add(_payload(0, 10, 1.0, [[i, i / 10, {"loss": 1 / (i + 1), "acc": i / 10}]
                                  for i in range(10)]))
    mon.add(_payload(1, 10, 1.0))
    assert render_curves(mon)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank 1" in rank_table(mon)


def test_train_flags_become_a_spec():
    from lepton_lab.notebook._train import parse_train_line

    spec = parse_train_line("--workers 4 --gpus-per-worker 1 --max-failures 2 "
                            "--checkpoint-every 3 --stop-on-nan --bf16 --metric acc --mode max"
                            .split())
    assert (spec.workers, spec.gpus_per_worker, spec.max_failures, spec.checkpoint_every) == \
        (4, 1.0, 2, 3)
    assert spec.stop_on_nan and spec.bf16 and spec.metric == "acc" and spec.mode == "max"
    assert spec.resources()["workers"] == 4
    assert parse_train_line(["--help"]) is None


def test_strategy_elastic_and_privacy_flags():
    from lepton_lab.notebook._train import parse_train_line

    spec = parse_train_line("--workers 2-3 --max-failures 2 --strategy fsdp --cpu-offload "
                            "--fsdp-min-params 5000".split())
    assert (spec.workers, spec.max_workers, spec.world, spec.elastic) == (2, 3, 3, True)
    assert (spec.strategy, spec.cpu_offload, spec.fsdp_min_params) == ("fsdp", True, 5000)
    assert spec.resources()["max_workers"] == 3 and spec.privacy() is None
    fixed = parse_train_line(["--workers", "2"])
    assert (fixed.workers, fixed.world, fixed.elastic, fixed.strategy) == (2, 2, False, "ddp")
    dp = parse_train_line("--dp-epsilon 3 --max-grad-norm 0.5".split())
    assert dp.privacy() == {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 0.5}


@pytest.mark.parametrize("line, fragment", [
    ("--workers 0", "--workers"),
    ("--workers 3-2", "MIN <= MAX"),
    ("--workers 2-x", "MIN-MAX"),
    ("--workers 2-3", "--max-failures"),
    ("--strategy zero", "--strategy"),
    ("--cpu-offload", "--strategy fsdp"),
    ("--dp-epsilon 3 --strategy fsdp", "Opacus"),
    ("--dp-epsilon 0", "--dp-epsilon"),
    ("--dp-epsilon 1 --dp-delta 2", "--dp-delta"),
    ("--dp-delta 1e-5", "--dp-epsilon"),
    ("--max-failures -1", "--max-failures"),
    ("--checkpoint-every 0", "--checkpoint-every"),
    ("--mode best", "--mode"),
    ("--env API_TOKEN=x", "secret"),
    ("--bogus", "unrecognized"),
])
def test_bad_train_flags_are_one_line(line, fragment):
    from lepton_lab.notebook._train import parse_train_line

    with pytest.raises(LeptonUsageError) as info:
        parse_train_line(line.split())
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_tune_needs_metric_and_mode():
    from lepton_lab.notebook._train import parse_tune_line

    with pytest.raises(LeptonUsageError, match="--metric"):
        parse_tune_line(["--samples", "2"])
    spec = parse_tune_line("--samples 2 --scheduler pbt --metric acc --mode max".split())
    assert spec.samples == 2 and spec.scheduler == "pbt"


def test_split_tune_cell_keeps_line_numbers():
    from lepton_lab.training._tune import split_cell

    body = ("import math\nsearch_space = {\n    'lr': tune.uniform(0, 1),\n}\n"
            "x = config['lr']\nraise ValueError\n")
    space, rest = split_cell(body)
    assert "search_space" in space and space.startswith("import math")
    assert rest.splitlines()[5] == "raise ValueError"      # still cell line 6
    assert "search_space" not in rest
    with pytest.raises(LeptonUsageError, match="search_space"):
        split_cell("x = 1\n")


def test_resume_from_a_file_or_an_unknown_name(tmp_path):
    from lepton_lab.training._run import resolve_resume

    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    assert resolve_resume(str(f)) == b"weights"
    with pytest.raises(LeptonUsageError, match="%lepton runs"):
        resolve_resume("no-such-run")
