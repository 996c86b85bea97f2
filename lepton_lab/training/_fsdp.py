"""Fully sharded data parallel training (``--strategy fsdp``) on PyTorch's FSDP2.

With DDP every rank holds the whole model, its gradients and its optimizer state; with FSDP
each rank holds ``1/world`` of each, and a layer's parameters are all-gathered just before
it runs and freed after. That is what lets a model bigger than one device train at all.

- **Units.** ``fully_shard`` is applied bottom-up: each submodule that still holds at least
  ``min_params`` parameters of its own subtree becomes one unit (one all-gather per forward),
  then the root takes the rest. Fewer, bigger units mean fewer collectives; smaller ones
  mean a lower peak. A user who knows the architecture passes ``shard_modules`` (e.g. the
  transformer blocks) instead.
- **Precision.** On a GPU the parameters are all-gathered and computed in bf16 and gradients
  reduced in fp32 (``MixedPrecisionPolicy``); on the CPU (gloo) everything stays fp32.
- **Checkpoints** go through ``torch.distributed.checkpoint``: every rank writes its own
  shards, and a checkpoint saved on N ranks loads on M (DCP reshards by the tensors'
  global offsets), or into an unsharded model on one rank.
- **Back to the notebook.** A sharded module cannot be pickled as a whole: at the end of
  :func:`~lepton_lab.training.epochs`, or on :func:`full_model`, the ranks gather the full
  state dict to rank 0, which rebuilds a plain CPU module from a parameter-less copy of the
  original kept at :func:`shard_model` time. The trip back uses that copy.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Iterable

#: A submodule with at least this many parameters (not already in a unit) is its own unit.
DEFAULT_MIN_PARAMS = 100_000

# id(sharded module) -> its parameter-less original (rank 0) / its gathered plain copy
_TEMPLATES: dict[int, Any] = {}
_GATHERED: dict[int, Any] = {}
_REDUCER_ON = False


def _fsdp():
    from torch.distributed import fsdp

    return fsdp


def is_sharded(obj: Any) -> bool:
    return isinstance(obj, _fsdp().FSDPModule)


def _own_numel(module: Any, taken: set[int]) -> int:
    return sum(p.numel() for p in module.parameters() if id(p) not in taken)


def pick_units(model: Any, min_params: int) -> list[Any]:
    """The submodules to shard as their own units, children before parents (size policy)."""
    taken: set[int] = set()
    units: list[Any] = []

    def visit(module: Any) -> None:
        for child in module.children():
            visit(child)
        if module is not model and _own_numel(module, taken) >= min_params:
            units.append(module)
            taken.update(id(p) for p in module.parameters())

    visit(model)
    return units


def _meta_template(model: Any) -> Any:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device, made
    without copying any data (the memo hands deepcopy an empty stand-in for each tensor)."""
    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"),
                                         requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def shard_model(model: Any, *, device: Any, rank: int, modules: Iterable[Any] | None = None,
                min_params: int | None = None, cpu_offload: bool = False,
                mixed_precision: bool | None = None) -> Any:
    """Shard ``model`` over the default process group with ``fully_shard``; returns it."""
    import torch

    fsdp = _fsdp()
    if rank == 0:
        _TEMPLATES[id(model)] = _meta_template(model)
    on_gpu = device.type == "cuda"
    kwargs: dict[str, Any] = {}
    if mixed_precision if mixed_precision is not None else on_gpu:
        # bf16 keeps fp32's exponent range, so no loss scaling; reducing gradients in fp32
        # keeps the sum over ranks exact enough for the optimizer
        kwargs["mp_policy"] = fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                        reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = fsdp.CPUOffloadPolicy()
    else:
        model = model.to(device)
    units = list(modules) if modules is not None else pick_units(
        model, min_params or DEFAULT_MIN_PARAMS)
    for unit in units:
        fsdp.fully_shard(unit, **kwargs)
    fsdp.fully_shard(model, **kwargs)
    weakref.finalize(model, _forget, id(model))
    _install_reducer()
    return model


def _forget(key: int) -> None:
    _TEMPLATES.pop(key, None)
    _GATHERED.pop(key, None)


def full_model(model: Any) -> Any:
    """The whole model as a plain CPU module on rank 0 (``None`` on the other ranks).

    A collective: every rank must call it. A DDP model gives its inner module; an unsharded
    one is returned as it is."""
    if not is_sharded(model):
        return getattr(model, "module", model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    template = _TEMPLATES.get(id(model))
    if template is None:        # not rank 0 (only rank 0 keeps the template)
        return None
    plain = copy.deepcopy(template).to_empty(device="cpu")
    plain.load_state_dict(state)
    # buffers are not sharded by FSDP: copy every one (non-persistent ones are not in `state`)
    for name, buf in model.named_buffers():
        plain.get_buffer(name).copy_(buf.detach().cpu())
    plain.train(model.training)
    _GATHERED[id(model)] = plain
    return plain


def _install_reducer() -> None:
    """Pickling a sharded module for the notebook sends its gathered copy instead."""
    global _REDUCER_ON
    if not _REDUCER_ON:
        from ..remote._values import on_pickle

        on_pickle(_substitute)
        _REDUCER_ON = True


def _substitute(obj: Any) -> Any:
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):       # e.g. in the optimizer of a sharded model
        raise TypeError("it holds sharded (FSDP) tensors, which mean nothing outside the "
                        "ranks; the model itself comes back whole")
    if not is_sharded(obj):
        return None
    plain = _GATHERED.get(id(obj))
    if plain is None:
        raise TypeError("an FSDP-sharded model comes back whole only after "
                        "lepton.training.epochs() ends, or from lepton.training.full_model("
                        "model) called on every rank")
    return plain


# -- checkpoints ------------------------------------------------------------------------------
def _owner(optimizer: Any, modules: list[Any]) -> Any:
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for m in modules:
        if any(id(p) in params for p in m.parameters()):
            return m
    return None


def split_state(objects: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``objects`` -> (sharded ones: FSDP modules and their optimizers, everything else)."""
    import torch

    sharded = {n: o for n, o in objects.items() if is_sharded(o)}
    for name, obj in objects.items():
        if isinstance(obj, torch.optim.Optimizer) and _owner(obj, list(sharded.values())):
            sharded[name] = obj
    return sharded, {n: o for n, o in objects.items() if n not in sharded}


def _distributed_state(objects: dict[str, Any], modules: list[Any]) -> dict[str, Any]:
    import torch
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    out = {}
    for name, obj in objects.items():
        if isinstance(obj, torch.optim.Optimizer):
            out[name] = get_optimizer_state_dict(_owner(obj, modules), obj)
        else:
            out[name] = get_model_state_dict(getattr(obj, "module", obj))
    return out


def save_sharded(directory: str, objects: dict[str, Any]) -> None:
    """Every rank writes its shards of ``objects`` into ``directory`` (a collective)."""
    import torch.distributed.checkpoint as dcp

    modules = [o for o in objects.values() if hasattr(o, "parameters")]
    dcp.save(_distributed_state(objects, modules), checkpoint_id=directory)


def load_sharded(directory: str, objects: dict[str, Any], names: Iterable[str]) -> None:
    """Load the entries ``names`` of a sharded checkpoint into ``objects`` — sharded over any
    number of ranks, or plain modules and optimizers on one."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    wanted = {n: objects[n] for n in names if n in objects}
    modules = [getattr(o, "module", o) for o in objects.values() if hasattr(o, "parameters")]
    state = _distributed_state(wanted, modules)
    dcp.load(state, checkpoint_id=directory)
    for name, obj in wanted.items():       # modules first: optimizers map onto their params
        if not isinstance(obj, torch.optim.Optimizer):
            set_model_state_dict(getattr(obj, "module", obj), state[name])
    for name, obj in wanted.items():
        if isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(_owner(obj, modules), obj, state[name])
