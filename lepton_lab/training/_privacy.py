"""Differential privacy for ``%%lepton train --dp-epsilon`` (Opacus): :func:`make_private`, the
per-epoch budget check and report used by :func:`~lepton_lab.training.epochs`, and the checks
the kernel runs before anything is submitted.

DP-SGD in one paragraph: every step draws a Poisson sample of the data (each example is in the
batch with probability q, independently), clips each example's gradient to ``max_grad_norm``,
adds Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` to the sum and
takes the optimizer step. The accountant (RDP) turns (noise multiplier, q, steps) into the
epsilon spent for the given delta; Opacus picks the noise multiplier that spends exactly the
budget after the planned number of epochs.

Nothing here imports torch or Opacus at module level: the kernel imports this module too.
"""

from __future__ import annotations

import ast
import operator
import os
import sys
import warnings
from typing import Any, Iterator

from ..errors import LeptonUsageError
from ..remote._executor import at_cell_end
from . import _helpers as h

#: The accountant: RDP (Mironov 2017), Opacus's classic one. Its noise search is 4-15x faster
#: than PRV's on the digits benchmark (0.1-2 s vs 1.5-8 s on 2 vCPU), for ~6% more noise.
ACCOUNTANT = "rdp"
#: The accountant's entry in the checkpoint of :func:`epochs`, so a restart keeps the spend.
STATE_KEY = "dp_accountant"
#: Where to send a user whose model has a layer Opacus cannot train.
FIX_HINT = "fix the model first: model = opacus.validators.ModuleValidator.fix(model)"
CALL_HINT = "lepton.training.make_private(model, optimizer, loader, epochs=N)"

_REASONS = {  # short reasons for the layers Opacus refuses (its own texts are paragraphs)
    "BatchNorm": "it normalizes each sample with statistics of the whole batch, so one "
                 "sample's gradient depends on the others",
    "SyncBatchNorm": "it normalizes each sample with statistics of the whole batch",
    "LSTM": "its fused kernel hides per-sample gradients (Opacus has DPLSTM)",
    "GRU": "its fused kernel hides per-sample gradients (Opacus has DPGRU)",
    "RNN": "its fused kernel hides per-sample gradients (Opacus has DPRNN)",
    "MultiheadAttention": "its fused kernel hides per-sample gradients (Opacus has "
                          "DPMultiheadAttention)",
}


# -- checks (kernel and ranks) ----------------------------------------------------------------
def calls_make_private(source: str) -> bool:
    """Whether the cell calls ``make_private`` (by any spelling: ``lt.make_private(...)``,
    ``make_private(...)``, or a name it was imported as)."""
    names = {"make_private"}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(a.asname for a in node.names if a.name == "make_private" and a.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in names) or \
                    (isinstance(f, ast.Attribute) and f.attr == "make_private"):
                return True
    return False


def unsupported_layer(model: Any) -> tuple[str, str, str] | None:
    """The first trainable layer Opacus cannot train, as (name, class, reason), or None."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    for name, sub in trainable_modules(model):
        validate = ModuleValidator.VALIDATORS.get(type(sub))
        errors = validate(sub) if validate is not None else []
        if not errors and next(sub.buffers(recurse=False), None) is not None:
            errors = ["it keeps buffers computed across samples"]
        if errors:
            cls = type(sub).__name__
            reason = next((r for k, r in _REASONS.items() if cls.startswith(k)),
                          str(errors[0]).split(". ")[0])
            return name or "(the model itself)", cls, reason
    return None


def _layer_error(found: tuple[str, str, str], owner: str = "") -> LeptonUsageError:
    name, cls, reason = found
    return LeptonUsageError(f"{owner}layer '{name}' ({cls}) cannot be trained with "
                            f"differential privacy ({reason}); {FIX_HINT}")


def check_cell(source: str, values: dict[str, Any]) -> None:
    """The kernel's checks for a ``--dp-epsilon`` cell, before anything is submitted: the cell
    calls make_private, and no module it reads from the notebook has a layer Opacus refuses."""
    if not calls_make_private(source):
        raise LeptonUsageError(f"--dp-epsilon needs the cell to call {CALL_HINT} before its "
                               "training loop; nothing was sent")
    torch = sys.modules.get("torch")
    if torch is None:  # no module can be among the values without torch loaded
        return
    for var, value in sorted(values.items()):
        if isinstance(value, torch.nn.Module):
            found = unsupported_layer(value)
            if found is not None:
                raise _layer_error(found, f"'{var}': ")


# -- the Poisson-sampled loader ---------------------------------------------------------------
def _poisson_loader(loader: Any, distributed: bool) -> Any:
    """A loader over ``loader.dataset`` that draws Poisson batches of the same expected size,
    and counts samples and reshuffles shards per epoch as :func:`prepare_loader`'s does."""
    import torch
    from opacus.data_loader import wrap_collate_with_empty
    from opacus.utils.uniform_sampler import (
        DistributedUniformWithReplacementSampler,
        UniformWithReplacementSampler,
    )
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise LeptonUsageError("make_private needs a torch DataLoader over a map-style dataset "
                               "(e.g. lepton.training.prepare_loader((X, Y), batch_size=64))")
    dataset = loader.dataset
    # q: the same expected batch per rank as the loader given (1 / its batches per epoch)
    rate = 1 / len(loader)
    # why: a seed the cell may set (torch.manual_seed(0)) must not decide which examples a
    # step sees, and two ranks must not draw the same masks: each rank seeds its own generator
    # from the OS
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))

    class LockstepSampler(DistributedUniformWithReplacementSampler):
        def __iter__(self) -> Iterator[Any]:
            # why: Opacus's sampler skips a step whose local draw is empty; that rank would
            # then step once less than the others and the gradient all-reduce in
            # DistributedDPOptimizer would wait forever. An empty batch keeps the ranks in
            # step (Opacus's collate and optimizer handle empty batches).
            g = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
            order = torch.randperm(self.total_size, generator=g) if self.shuffle \
                else torch.arange(self.total_size)
            mine = order[self.rank:self.total_size:self.num_replicas]
            for _ in range(self.num_batches):
                mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
                yield mine[mask.nonzero(as_tuple=False).reshape(-1)].tolist()

    if distributed:
        # why: distributed Poisson sampling, not a DistributedSampler: the accountant assumes
        # every example joins each step's global batch with probability q, independently.
        # Each rank Poisson-samples its own shard with the same q, so the union over ranks is
        # exactly such a draw; a DistributedSampler's fixed-size batches are not.
        batches = LockstepSampler(total_size=len(dataset), sample_rate=rate, generator=gen)
    else:
        batches = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=rate,
                                                generator=gen)
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=loader.collate_fn,
        sample_empty_shapes=[(0, *getattr(x, "shape", ())) for x in first],
        dtypes=[getattr(x, "dtype", type(x)) for x in first])

    class PoissonLoader(h._loader_class()):
        def __iter__(self) -> Iterator[Any]:
            if hasattr(self.batch_sampler, "set_epoch") and h._RUN.epoch is not None:
                self.batch_sampler.set_epoch(h._RUN.epoch)  # other shards each epoch
            yield from super().__iter__()

    return PoissonLoader(dataset, batch_sampler=batches, collate_fn=collate,
                         num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                         generator=gen)


# -- make_private -----------------------------------------------------------------------------
class _Private:
    """This rank's DP state: the engine (its accountant), the noise and the plan."""

    def __init__(self, engine: Any, optimizer: Any, hooks: Any, settings: dict[str, float],
                 steps_per_epoch: int, epochs: int):
        self.engine, self.optimizer, self.hooks = engine, optimizer, hooks
        self.epsilon, self.delta = float(settings["epsilon"]), float(settings["delta"])
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.sample_rate = 1 / steps_per_epoch
        self.ahead: tuple[int, float] = (0, 0.0)   # (total steps, epsilon) last projected

    def _steps(self) -> int:
        return sum(int(n) for *_, n in self.engine.accountant.history)

    def spent(self) -> float:
        acc = self.engine.accountant
        if not len(acc):
            return 0.0
        if self.ahead[0] == self._steps():  # the epoch went as projected: same history
            return self.ahead[1]
        return _epsilon(acc, self.delta)

    def after(self, steps: int) -> float:
        """The epsilon spent once ``steps`` more steps are taken (~0.1 s with RDP)."""
        from opacus.accountants import create_accountant

        acc = create_accountant(mechanism=ACCOUNTANT)
        acc.history = list(self.engine.accountant.history) + [
            (self.optimizer.noise_multiplier, self.sample_rate, steps)]
        self.ahead = (self._steps() + steps, _epsilon(acc, self.delta))
        return self.ahead[1]


def _epsilon(accountant: Any, delta: float) -> float:
    import warnings

    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the RDP bound is a little loose (epsilon is
        # over-, never under-estimated) early in a run; not the user's business
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta))


def make_private(model: Any, optimizer: Any, loader: Any, *, epochs: int
                 ) -> tuple[Any, Any, Any]:
    """Make ``model``, ``optimizer`` and ``loader`` differentially private for this run.

    Without ``--dp-epsilon`` it returns them unchanged, so the same cell trains with and
    without DP. With it (Opacus's ``make_private_with_epsilon``): the noise multiplier is
    chosen so that ``epochs`` epochs spend exactly the budget ``(--dp-epsilon, --dp-delta)``;
    the optimizer clips each sample's gradient to ``--max-grad-norm`` and adds the noise; the
    loader draws Poisson batches of the same expected size. Several ranks: pass the model from
    :func:`prepare_model` (it syncs the ranks' weights; the optimizer all-reduces the noisy
    gradients). :func:`epochs` then reports ``dp_epsilon`` (spent so far) every epoch,
    checkpoints the accountant, and stops the run before an epoch that would overspend::

        model = prepare_model(Net())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = prepare_loader((X, Y), batch_size=64)
        model, opt, loader = make_private(model, opt, loader, epochs=10)
        for epoch in epochs(10, model=model, optimizer=opt):
            ...

    The loss must be a mean over the batch (the default of the torch losses). The model comes
    back to the notebook as a plain module. Noise comes from torch's generator seeded from
    the OS, not from a cryptographic one (Opacus's ``secure_mode``).
    """
    settings = h._RUN.privacy
    if not settings:
        return model, optimizer, loader
    import torch
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    try:
        epochs = operator.index(epochs)   # an int, numpy's too; not 2.5
    except TypeError:
        epochs = 0
    if epochs < 1:
        raise LeptonUsageError("make_private(..., epochs=N): give the number of epochs the "
                               "loop trains (an int >= 1); the noise depends on it")
    plain = model.module if isinstance(
        model, (DPDDP, torch.nn.parallel.DistributedDataParallel)) else model
    if not plain.training:
        raise LeptonUsageError("make_private: the model is in eval mode; call model.train() "
                               "before make_private")
    found = unsupported_layer(plain)
    if found is not None:
        raise _layer_error(found)
    distributed = h.world_size() > 1
    if distributed and not isinstance(model, (DPDDP, torch.nn.parallel.DistributedDataParallel)):
        # why: the ranks must start from the same weights; DPDDP broadcasts rank 0's
        model = DPDDP(model)
    loader = _poisson_loader(loader, distributed)
    # torch warns once that Opacus's hook on the first layer sees no input gradient: harmless
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")
    # why: the noise must not be reproducible from a seed the notebook shows (manual_seed(0))
    noise = torch.Generator(h.device()).manual_seed(int.from_bytes(os.urandom(8), "little"))
    try:
        with warnings.catch_warnings():
            # "Secure RNG turned off" (said in the docstring) and the RDP order warning
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=ACCOUNTANT)
            # poisson_sampling=False: the loader above is Poisson-sampled already (Opacus's
            # own would not keep the ranks in step or count samples for the live view)
            hooks, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader,
                target_epsilon=settings["epsilon"], target_delta=settings["delta"],
                epochs=epochs, max_grad_norm=settings["max_grad_norm"],
                poisson_sampling=False, wrap_model=False, noise_generator=noise)
    except ValueError as exc:
        if "budget is too low" not in str(exc):
            raise
        raise LeptonUsageError(
            f"--dp-epsilon {settings['epsilon']:g} (delta {settings['delta']:g}) cannot be "
            f"reached in {epochs} epochs of {len(loader)} steps: no noise multiplier is large "
            "enough; raise --dp-epsilon or train fewer epochs") from None
    hooks.forbid_grad_accumulation()   # what Opacus does with its own Poisson loader
    h._RUN.private = _Private(engine, optimizer, hooks, settings, len(loader), epochs)
    # the hooks sit on the model's own layers (wrap_model=False), so the cell keeps using its
    # module; DPDDP only broadcast the weights and is dropped again
    return (model.module if isinstance(model, DPDDP) else model), optimizer, loader


def _cleanup() -> None:
    """When the cell ends: the model goes back to the notebook without Opacus's hooks."""
    private = h._RUN.private
    if private is not None and private.hooks is not None:
        private.hooks.cleanup()
        private.hooks = None


at_cell_end(_cleanup)


# -- what epochs() calls ----------------------------------------------------------------------
def with_accountant(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` plus the accountant, when the run is private and checkpoints anything."""
    private = h._RUN.private
    if private is None or not state:
        return state
    return {**state, STATE_KEY: private.engine.accountant}


def before_epoch(epoch: int) -> None:
    """Stop every rank (they all compute the same) before an epoch that would overspend."""
    private = h._RUN.private
    if private is None:
        return
    ahead = private.after(private.steps_per_epoch)
    if ahead > private.epsilon * (1 + 1e-6):
        h._emit(force=True)
        raise h.TrainingStopped(
            f"differential privacy budget: epoch {epoch} would bring epsilon to {ahead:.2f}, "
            f"above --dp-epsilon {private.epsilon:g} ({private.spent():.2f} spent); "
            f"make_private(..., epochs={private.epochs}) planned for {private.epochs} epochs")


def after_epoch() -> None:
    """Report the epsilon spent so far (the live view, the run's history and metrics)."""
    private = h._RUN.private
    if private is not None:
        h.report(step=h._RUN.step, dp_epsilon=private.spent())
