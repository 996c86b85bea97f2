"""lepton_lab.training helpers on a single process (no torch.distributed, no Ray)."""

import numpy as np
import pytest
import torch

from lepton_lab import training
from lepton_lab.remote._executor import _STATE, Emitter


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


def test_report_sends_train_events_that_the_monitor_understands():
    from lepton_lab.remote._monitor import TrainMonitor

    emitter = Emitter()
    _STATE.emitter = emitter
    try:
        loader = training.prepare_loader((torch.randn(40, 4), torch.arange(40)), batch_size=10)
        for epoch in training.epochs(2):
            for x, _ in loader:
                training.report(loss=float(x.abs().mean()), plot_every=0)
        training.report(loss=float("inf"), plot_every=0)
    finally:
        _STATE.emitter = None
    events = [e[1] for e in emitter.drain(0.0) if e[0] == "train"]
    assert events, "no train events"
    mon = TrainMonitor()
    for payload in events:
        mon.add(payload)
    assert mon.epochs == 2 and mon.steps_per_epoch == 4
    assert len(mon.history) == 9 and mon.history[3]["epoch"] == 1.0  # 4th batch ends epoch 0
    assert sum(p["samples"] for p in events) == 80
    assert mon.warnings == ["loss is inf at step 9"]
    assert mon.take_new_warnings() == ["loss is inf at step 9"] and not mon.take_new_warnings()


def test_stop_on_nan_raises_on_a_nonfinite_loss_only():
    from lepton_lab.training import _helpers

    _helpers.configure("interactive", stop_on_nan=True)
    training.report(0, acc=float("nan"))         # not a loss: flagged, not stopped
    with pytest.raises(training.TrainingStopped, match="loss is nan"):
        training.report(1, loss=float("nan"))


def test_exploding_gradients_are_flagged(monkeypatch, capsys):
    from lepton_lab.training import _helpers

    model = training.prepare_model(torch.nn.Linear(4, 1))
    monkeypatch.setattr(_helpers.time, "monotonic", iter(range(0, 10_000, 2)).__next__)
    for step in range(8):
        model.zero_grad()
        scale = 1e4 if step == 7 else 1.0
        (model(torch.ones(2, 4)).sum() * scale).backward()
        training.report(step, loss=1.0)
    assert "gradient norm exploded" in capsys.readouterr().err


def test_checkpoint_round_trip_and_transfer(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    path = tmp_path / "ck.pt"
    training.save_checkpoint(epoch=2, path=str(path), model=src)
    blob = training.load_checkpoint(str(path))
    assert blob["epoch"] == 2 and set(blob["state"]) == {"model"}
    # transfer: a new head of another size keeps the matching first layer
    from lepton_lab.training import _helpers

    dst = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 5))
    _helpers.configure("interactive", resume=blob)
    list(training.epochs(1, model=dst))
    assert torch.equal(dst[0].weight, src[0].weight)
    assert dst[1].weight.shape == (5, 8)
