"""lepton_lab.training helpers on a single process (no torch.distributed, no Ray)."""

import numpy as np
import pytest
import torch

from lepton_lab import training
from lepton_lab.remote._executor import Emitter, _STATE


@pytest.fixture(autouse=True)
def _fresh():
    training.reset()
    yield
    training.reset()


def test_single_process_defaults():
    assert training.rank() == 0 and training.world_size() == 1 and training.is_main()
    assert training.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    m = torch.nn.Linear(3, 2)
    assert training.prepare_model(m) is m  # no DDP around a single process


def test_shard_with_one_rank_is_everything():
    data = np.arange(10)
    assert training.shard(data).tolist() == list(range(10))


def test_shard_splits_disjointly(monkeypatch):
    from lepton_lab.training import _helpers

    data = list(range(11))
    parts = []
    for r in range(3):
        monkeypatch.setattr(_helpers, "rank", lambda r=r: r)
        monkeypatch.setattr(_helpers, "world_size", lambda: 3)
        parts.append(_helpers.shard(data))
    assert sorted(sum(parts, [])) == data and all(3 <= len(p) <= 4 for p in parts)


def test_prepare_loader_accepts_tensor_tuples():
    x, y = torch.randn(20, 4), torch.arange(20)
    loader = training.prepare_loader((x, y), batch_size=8, shuffle=False)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    assert torch.equal(batches[0][1], torch.arange(8))


def test_report_keeps_history_and_warns_on_nan(capsys):
    training.report(0, loss=1.5)
    training.report(1, loss=float("nan"), acc=0.5)
    hist = training.history()
    assert hist["loss"][0] == (0.0, 1.5) and hist["acc"] == [(1.0, 0.5)]
    assert "loss is nan at step 1" in capsys.readouterr().err


def test_report_draws_a_live_curve_into_the_cell():
    emitter = Emitter()
    _STATE.emitter = emitter
    try:
        training.report(0, loss=2.0, plot_every=0)
        training.report(1, loss=1.0, plot_every=0)
    finally:
        _STATE.emitter = None
    events = emitter.drain(0.0)
    shows = [e for e in events if e[0] == "display"]
    assert len(shows) == 2 and "image/png" in shows[0][1]
    assert shows[0][4] is False and shows[1][4] is True  # then updated in place
    assert shows[0][3] == shows[1][3]
    assert "loss=1" in shows[1][1]["text/plain"]
