"""lepton.training.make_private (differential privacy with Opacus) in one process, no Ray:
real Opacus, real torch, sklearn's digits."""

from __future__ import annotations

import pickle

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

import lepton_lab.training as lt  # noqa: E402
from lepton_lab.errors import LeptonUsageError  # noqa: E402
from lepton_lab.training import _checkpoint, _privacy  # noqa: E402
from lepton_lab.training import _helpers as h  # noqa: E402

PRIVACY = {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}


@pytest.fixture(autouse=True)
def fresh_run():
    lt.reset()
    yield
    lt.reset()


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _parts(X, Y, model=None):
    model = lt.prepare_model(model or _mlp())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return model, opt, lt.prepare_loader((X[:1400], Y[:1400]), batch_size=64)


def test_without_dp_settings_it_returns_its_inputs(digits):
    parts = _parts(*digits)
    out = lt.make_private(*parts, epochs=3)
    assert all(a is b for a, b in zip(out, parts))


def test_two_private_epochs_stay_within_the_budget_and_learn(digits):
    X, Y = digits
    h.configure("interactive", privacy=PRIVACY)
    model, opt, loader = lt.make_private(*_parts(X, Y), epochs=2)
    assert type(model) is torch.nn.Sequential          # the cell keeps its own module
    assert type(opt).__name__ == "DPOptimizer" and opt.noise_multiplier > 0.5
    sizes = []
    for _ in lt.epochs(2, model=model, optimizer=opt):
        for xb, yb in loader:
            sizes.append(len(xb))
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            lt.report(loss=loss.item())
    assert len(sizes) == 2 * 22 and len(set(sizes)) > 3     # Poisson: batch sizes vary
    spent = h._RUN.private.engine.accountant.get_epsilon(PRIVACY["delta"])
    assert 2.0 < spent <= PRIVACY["epsilon"]
    reported = [v for _, v in lt.history()["dp_epsilon"]]
    assert len(reported) == 2 and reported[0] < reported[1] == pytest.approx(spent)
    with torch.no_grad():
        acc = (model(X[1400:]).argmax(1) == Y[1400:]).float().mean().item()
    assert acc > 0.5, acc                                 # chance is 0.1
    # at the cell's end the hooks go, and the model travels as a plain module
    _privacy._cleanup()
    back = pickle.loads(pickle.dumps(model))
    assert not any(m._forward_hooks or m._backward_hooks for m in back.modules())


def test_an_epoch_that_would_overspend_is_not_started(digits):
    h.configure("interactive", privacy=PRIVACY)
    model, opt, loader = lt.make_private(*_parts(*digits), epochs=1)
    done = []
    with pytest.raises(lt.TrainingStopped, match=r"epoch 1 would bring epsilon to .* above "
                       r"--dp-epsilon 3 .*epochs=1\) planned for 1 epochs"):
        for epoch in lt.epochs(2, model=model, optimizer=opt):
            for xb, yb in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            done.append(epoch)
    assert done == [0]


def test_the_accountant_is_checkpointed_and_restored(digits, tmp_path):
    h.configure("interactive", privacy=PRIVACY)
    model, opt, loader = lt.make_private(*_parts(*digits), epochs=2)
    for xb, yb in loader:   # one epoch's steps
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    spent = h._RUN.private.spent()
    state = _privacy.with_accountant({"model": model, "optimizer": opt})
    assert _privacy.STATE_KEY in state
    lt.save_checkpoint(epoch=0, path=str(tmp_path / "ck.pt"), **state)
    # a restarted worker: a fresh run, make_private again, then the checkpoint is loaded
    lt.reset()
    h.configure("interactive", privacy=PRIVACY)
    model, opt, loader = lt.make_private(*_parts(*digits), epochs=2)
    assert h._RUN.private.spent() == 0.0
    saved = lt.load_checkpoint(str(tmp_path / "ck.pt"))["state"]
    _checkpoint._load_states(_privacy.with_accountant({"model": model, "optimizer": opt}), saved)
    assert h._RUN.private.spent() == pytest.approx(spent)


def test_a_batchnorm_model_is_refused_in_one_line(digits):
    h.configure("interactive", privacy=PRIVACY)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
                              torch.nn.Linear(32, 10))
    with pytest.raises(LeptonUsageError) as info:
        lt.make_private(*_parts(*digits, model=net), epochs=2)
    text = str(info.value)
    assert "\n" not in text and "layer '1' (BatchNorm1d)" in text
    assert "opacus.validators.ModuleValidator.fix(model)" in text
    assert h._RUN.private is None
    # the kernel's check of a module the cell reads from the notebook names the variable
    with pytest.raises(LeptonUsageError, match=r"^'net': layer '1' \(BatchNorm1d\)"):
        _privacy.check_cell("model, opt, loader = lt.make_private(net, o, l, epochs=2)",
                            {"net": net, "n": 3})


def test_an_impossible_budget_is_refused_in_one_line(digits):
    h.configure("interactive", privacy=dict(PRIVACY, epsilon=1e-4))
    with pytest.raises(LeptonUsageError) as info:
        lt.make_private(*_parts(*digits), epochs=2)
    text = str(info.value)
    assert "\n" not in text and "--dp-epsilon 0.0001" in text and "cannot be reached" in text
    assert h._RUN.private is None


def test_epochs_must_be_a_whole_number_of_epochs(digits):
    h.configure("interactive", privacy=PRIVACY)
    for bad in (0, 2.5, None):
        with pytest.raises(LeptonUsageError, match=r"^make_private\(\.\.\., epochs=N\)"):
            lt.make_private(*_parts(*digits), epochs=bad)


@pytest.mark.parametrize("source, calls", [
    ("model, opt, loader = lepton.training.make_private(model, opt, loader, epochs=3)", True),
    ("from lepton_lab.training import make_private as mp\nm, o, l = mp(m, o, l, epochs=1)",
     True),
    ("from lepton_lab.training import make_private\nm, o, l = make_private(m, o, l, epochs=1)",
     True),
    ("for epoch in lepton.training.epochs(3):\n    pass", False),
    ("# make_private(model, opt, loader, epochs=3)\nx = 1", False),
])
def test_the_kernel_sees_whether_the_cell_calls_make_private(source, calls):
    assert _privacy.calls_make_private(source) is calls
    if not calls:
        with pytest.raises(LeptonUsageError, match=r"--dp-epsilon needs the cell to call "
                           r"lepton\.training\.make_private\(model, optimizer, loader, "
                           r"epochs=N\)"):
            _privacy.check_cell(source, {})
