"""Values on their way between the kernel and the cluster.

Into a cell: the kernel ships the names a cell reads (``ray.put`` for big ones, see
``_runner.ship_values``); :func:`resolve_values` fetches them on the worker. Out of a cell:
:func:`pack_values` pickles the names it assigned (GPU tensors and modules come back on the
CPU, DDP wrappers as their module, and a feature may hand in a stand-in with
:func:`on_pickle`); :func:`unpack_values` opens them in the kernel.
"""

from __future__ import annotations

import copy
import io
import sys
from typing import Any, Callable

import cloudpickle


def _identity(x: Any) -> Any:
    return x


_SUBSTITUTES: list[Callable[[Any], Any]] = []


def on_pickle(fn: Callable[[Any], Any]) -> None:
    """Let ``fn(obj)`` give a stand-in to send to the kernel instead of ``obj`` (None: send
    ``obj``; an exception: the name stays on the cluster with that reason). ``training`` sends
    the gathered copy of a sharded model this way."""
    if fn not in _SUBSTITUTES:
        _SUBSTITUTES.append(fn)


class _CPUPickler(cloudpickle.Pickler):
    """Pickles results for the kernel: tensors and modules on a GPU come back on the CPU."""

    def reducer_override(self, obj: Any) -> Any:
        for fn in _SUBSTITUTES:
            stand_in = fn(obj)
            if stand_in is not None:
                return _identity, (stand_in,)
        torch = sys.modules.get("torch")
        if torch is not None:
            if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
                return _identity, (obj.module,)
            if isinstance(obj, torch.Tensor) and obj.device.type not in ("cpu", "meta"):
                return _identity, (obj.detach().cpu(),)
            if isinstance(obj, torch.nn.Module) and any(
                    t.device.type not in ("cpu", "meta")
                    for t in list(obj.parameters()) + list(obj.buffers())):
                return _identity, (copy.deepcopy(obj).cpu(),)
        return super().reducer_override(obj)


def pack_values(ns: dict[str, Any], names: list[str] | tuple[str, ...]) -> tuple[dict, dict]:
    """Pickle the named values for the trip back; names that cannot travel are reported."""
    import types

    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name not in ns or name.startswith("__"):
            continue
        obj = ns[name]
        if isinstance(obj, types.ModuleType):
            values[name] = ("module", obj.__name__)
            continue
        buf = io.BytesIO()
        try:
            _CPUPickler(buf, protocol=5).dump(obj)
        except Exception as exc:  # noqa: BLE001 - reported per name
            skipped[name] = f"{type(obj).__name__} cannot be pickled ({str(exc)[:120]})"
            continue
        values[name] = ("pickle", buf.getvalue())
    return values, skipped


def resolve_values(values: dict[str, Any]) -> dict[str, Any]:
    import importlib

    out: dict[str, Any] = {}
    refs = {}
    for name, (kind, value) in values.items():
        if kind == "module":
            out[name] = importlib.import_module(value)
        else:
            refs[name] = value
    if refs:
        import ray

        fetched = ray.get(list(refs.values()))
        out.update(zip(refs.keys(), fetched))
    return out


def unpack_values(values: dict[str, tuple], skipped: dict[str, str]) -> dict[str, Any]:
    import importlib

    out: dict[str, Any] = {}
    for name, (kind, blob) in values.items():
        try:
            out[name] = importlib.import_module(blob) if kind == "module" else cloudpickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - e.g. a class only the cluster can import
            skipped[name] = f"cannot be unpickled in the kernel ({str(exc)[:120]})"
    return out
