"""Epochs, checkpoints and resuming (the part of :mod:`lepton_lab.training` that talks to
Ray Train's and Tune's checkpoint storage).

Plain checkpoints are one file, ``lepton_state.pt``, written by rank 0. A model sharded with
``--strategy fsdp`` is saved with ``torch.distributed.checkpoint`` instead: every rank writes
its own shard into the same checkpoint directory (see :mod:`._fsdp`), so a run saved on N
ranks resumes on any number of ranks.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from typing import Any, Iterator

from . import _helpers as h
from . import _privacy
from ._helpers import CHECKPOINT_FILE


# -- epochs and checkpoints -------------------------------------------------------------------
def epochs(n: int, **state: Any) -> Iterator[int]:
    """Iterate over epochs ``0..n-1`` with progress, checkpoints and resumption::

        for epoch in lepton.training.epochs(15, model=model, optimizer=opt):
            for x, y in loader:
                ...

    ``state`` names the objects to checkpoint (anything with ``state_dict``). Under
    ``%%lepton train`` a checkpoint is saved every ``--checkpoint-every`` epochs and after the
    last; after a worker failure the run restarts here from the latest checkpoint, and
    ``--resume-from`` loads an earlier run's weights before epoch 0 (transfer learning).
    After :func:`make_private` (``--dp-epsilon``) each epoch reports ``dp_epsilon``, the
    accountant is checkpointed with ``state``, and an epoch that would spend more than the
    budget is not started: the run stops with the reason.
    """
    run = h._RUN
    run.epochs = int(n)
    run.optimizers = [o for o in state.values() if hasattr(o, "param_groups")]
    first = 0
    given, state = state, _privacy.with_accountant(state)  # DP: the spend survives a restart
    restart = _restart_checkpoint()
    if restart is not None:
        _load_blob(state, restart)
        first = int(restart.get("epoch", -1)) + 1
        print(f"lepton: resumed from the checkpoint of epoch {first - 1} "
              f"(attempt {run.attempt})", file=sys.stderr)
    elif run.resume is not None:
        _load_blob(given, run.resume, strict=False)
    for epoch in range(first, run.epochs):
        _privacy.before_epoch(epoch)         # DP: stop before an epoch that would overspend
        run.epoch, run.step_in_epoch = epoch, 0
        yield epoch
        _privacy.after_epoch()               # DP: report dp_epsilon (also in the checkpoint)
        due = epoch == run.epochs - 1 or (epoch + 1) % run.checkpoint_every == 0
        if run.mode in ("train", "tune") and state and due:
            save_checkpoint(epoch=epoch, **state)
        elif run.mode == "tune":
            from ray import tune

            tune.report(dict(run.latest, epoch=epoch))
    run.epoch = run.epochs
    if h._dist() is not None:
        # the ranks are in step here: gather each sharded model whole (to rank 0), so it can
        # come back to the notebook and the registry like a DDP model does
        from ._fsdp import full_model, is_sharded

        for obj in state.values():
            if is_sharded(obj):
                full_model(obj)
    h._emit(force=True)


def _state_of(obj: Any) -> Any:
    obj = getattr(obj, "module", obj)  # DDP: save the plain model's keys
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _load_blob(objects: dict[str, Any], blob: dict[str, Any], strict: bool = True) -> None:
    """Load a checkpoint (see :func:`load_checkpoint`) into the objects given to epochs()."""
    sharded = blob.get("sharded") or []
    _load_states({n: o for n, o in objects.items() if n not in sharded}, blob.get("state", {}),
                 strict)
    if sharded:
        from ._fsdp import load_sharded

        load_sharded(blob["dir"], objects, sharded)


def _load_states(objects: dict[str, Any], saved: dict[str, Any], strict: bool = True) -> None:
    for name, obj in objects.items():
        if name not in saved:
            continue
        target = getattr(obj, "module", obj)
        if h._dist() is not None and _is_sharded(target):
            # a whole-model checkpoint (a DDP run's) into an FSDP model: each rank keeps
            # the slices of its own shards
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(target, saved[name], options=StateDictOptions(
                full_state_dict=True, strict=strict))
        elif hasattr(target, "load_state_dict"):
            if strict or not hasattr(target, "named_parameters"):
                target.load_state_dict(saved[name])
            else:
                # transfer learning: take the layers whose shapes still match
                own = target.state_dict()
                fit = {k: v for k, v in saved[name].items()
                       if k in own and getattr(v, "shape", None) == own[k].shape}
                target.load_state_dict(fit, strict=False)


def _is_sharded(obj: Any) -> bool:
    from ._fsdp import is_sharded

    return is_sharded(obj)


def _split(objects: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sharded objects: FSDP models and their optimizers, the rest)."""
    if h._dist() is None:
        return {}, objects
    from ._fsdp import split_state

    return split_state(objects)


def save_checkpoint(epoch: int | None = None, *, metrics: dict[str, float] | None = None,
                    path: str | None = None, **objects: Any) -> None:
    """Checkpoint ``objects`` (their ``state_dict``) with ``epoch`` and the latest metrics.

    Under ``%%lepton train`` every rank must call it (Ray Train registers the checkpoint
    once all ranks have); rank 0's copy is kept. Elsewhere give ``path`` (a file).
    """
    import torch

    run = h._RUN
    metrics = dict(run.latest if metrics is None else metrics)
    if epoch is not None:
        metrics["epoch"] = epoch
    sharded, plain = _split(objects)
    blob = {"epoch": epoch, "metrics": metrics, "sharded": sorted(sharded),
            "state": {name: _state_of(obj) for name, obj in plain.items()}}
    if path is not None:
        if sharded:          # a directory: every rank's shards, and rank 0's file
            os.makedirs(path, exist_ok=True)
            _write(path, blob, sharded)
        else:
            torch.save(blob, path)
        return
    if run.mode == "train":
        from ray import train

        with tempfile.TemporaryDirectory() as tmp:
            _write(tmp, blob, sharded)
            if h.is_main() or sharded:
                # each rank reports its own directory; Ray Train puts their files together
                # in the run's storage as one checkpoint (DCP names each rank's files apart)
                train.report(metrics, checkpoint=train.Checkpoint.from_directory(tmp))
            else:
                train.report(metrics)
    elif run.mode == "tune":
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            torch.save(blob, os.path.join(tmp, CHECKPOINT_FILE))
            tune.report(dict(metrics, step=run.step),
                        checkpoint=tune.Checkpoint.from_directory(tmp))
    else:
        raise ValueError("save_checkpoint(path=...) needs a file path outside %%lepton train")


def _write(directory: str, blob: dict[str, Any], sharded: dict[str, Any]) -> None:
    import torch

    if sharded:
        from ._fsdp import save_sharded

        save_sharded(directory, sharded)          # a collective: every rank writes its part
    if h.is_main():
        torch.save(blob, os.path.join(directory, CHECKPOINT_FILE))


def _read_checkpoint_dir(directory: str) -> dict[str, Any]:
    import torch

    blob = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                      weights_only=False)
    if blob.get("sharded"):
        blob["dir"] = directory              # the shards are read from there when loaded
    return blob


def _restart_checkpoint() -> dict[str, Any] | None:
    """The latest checkpoint of this run after a restart (Ray Train or Tune), if any."""
    run = h._RUN
    if run.mode not in ("train", "tune"):
        return None
    if run.mode == "train":
        from ray import train

        ckpt = train.get_checkpoint()
    else:
        from ray import tune

        ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        blob = _read_checkpoint_dir(d)
    if blob.get("sharded") and type(ckpt.filesystem).__name__ != "LocalFileSystem":
        blob["dir"] = ckpt.to_directory()    # shards in remote storage: a local copy to load
    elif blob.get("sharded"):
        blob["dir"] = ckpt.path
    return blob


def load_checkpoint(source: str | bytes | None = None) -> dict[str, Any] | None:
    """A checkpoint as a dict (``epoch``, ``metrics``, ``state``): from a file or directory
    ``source``, or (None) this run's restart checkpoint, else its ``--resume-from``."""
    import torch

    if source is None:
        return _restart_checkpoint() or h._RUN.resume
    if isinstance(source, bytes):
        return torch.load(io.BytesIO(source), map_location="cpu", weights_only=False)
    if os.path.isdir(source):
        return _read_checkpoint_dir(source)
    return torch.load(source, map_location="cpu", weights_only=False)
