"""The model registry: every trained, imported or compressed model as ``name:version``.

Artifacts live under ``$LEPTON_HOME/models/<name>/<version>/`` (``model.pt``: the whole
``torch.nn.Module``, since a pruned network no longer matches its class's constructor; or
``model.onnx``), with their SHA-256 and lineage in the state store::

    from lepton_lab.registry import register_module, load_model
    rec = register_module(model, "digits", run_id="1123-ab12cd34")   # -> digits:1
    model = load_model("digits:1")
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path
from typing import Any, Callable

from .config import get_config
from .errors import LeptonUsageError
from .store import ModelRecord, check_name, get_store


def models_dir() -> Path:
    path = get_config().home_path / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_bytes(module: Any) -> bytes:
    """``torch.save`` of the whole module, moved to the CPU first when it can be."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise LeptonUsageError(f"expected a torch.nn.Module, got {type(module).__name__}; "
                               "register the model object itself")
    import cloudpickle

    buf = io.BytesIO()
    # cloudpickle: a class defined in the notebook travels by value, so replicas and other
    # kernels can load it (plain pickle would refer to the kernel's __main__)
    torch.save(module, buf, pickle_module=cloudpickle)
    return buf.getvalue()


def count_params(module: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in module.parameters()))
    except Exception:  # noqa: BLE001 - not a torch module
        return None


def register_bytes(data: bytes, name: str, *, format: str, kind: str,
                   params: int | None = None, parent: str | None = None,
                   run_id: str | None = None, checkpoint: str | None = None,
                   settings: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None,
                   description: str | None = None, dedupe: bool = False) -> ModelRecord:
    """Store an artifact's bytes as the next version of ``name``.

    With ``dedupe``, bytes identical to the latest version's return that version instead of
    making a new one (registering the same notebook model twice is not a new model).
    """
    check_name(name)
    store = get_store()
    digest = _sha256(data)
    if dedupe:
        latest = store.list_models(name, limit=1)
        if latest and latest[0].sha256 == digest:
            return latest[0]
    staging = models_dir() / name / f".incoming-{digest[:16]}"
    staging.mkdir(parents=True, exist_ok=True)
    filename = "model.onnx" if format == "onnx" else "model.pt"
    (staging / filename).write_bytes(data)
    try:
        rec = store.register_model(name, kind=kind, format=format,
                                   path=str(staging / filename), sha256=digest, size=len(data),
                                   params=params, parent=parent, run_id=run_id,
                                   checkpoint=checkpoint, settings=settings, metrics=metrics,
                                   description=description)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = models_dir() / name / str(rec.version)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    path = str(final / filename)
    with store._tx() as db:  # noqa: SLF001 - the path is known only once the version is
        db.execute("UPDATE models SET path=? WHERE name=? AND version=?",
                   (path, rec.name, rec.version))
    return store.get_model(rec.ref)


def register_module(module: Any, name: str, *, kind: str = "imported",
                    run_id: str | None = None, checkpoint: str | None = None,
                    parent: str | None = None, settings: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None,
                    input_shape: tuple[int, ...] | None = None,
                    dedupe: bool = True) -> ModelRecord:
    """Register a ``torch.nn.Module`` (a trained model from the notebook, for example)."""
    settings = dict(settings or {})
    if input_shape is not None:
        settings["input_shape"] = list(input_shape)
    return register_bytes(module_bytes(module), name, format="torch", kind=kind,
                          params=count_params(module), parent=parent, run_id=run_id,
                          checkpoint=checkpoint, settings=settings, metrics=metrics,
                          dedupe=dedupe)


def read_artifact(ref: str) -> tuple[ModelRecord, bytes]:
    """A model's record and its artifact bytes, checked against the recorded SHA-256."""
    rec = get_store().get_model(ref)
    try:
        data = Path(rec.path).read_bytes()
    except OSError as exc:
        raise LeptonUsageError(f"model {rec.ref}'s file {rec.path} cannot be read ({exc}); "
                               "register it again") from None
    if _sha256(data) != rec.sha256:
        raise LeptonUsageError(f"model {rec.ref}'s file {rec.path} changed since it was "
                               "registered (SHA-256 mismatch); register it again")
    return rec, data


def load_bytes(data: bytes, format: str, device: str = "cpu") -> Any:
    """An artifact's bytes as a runnable model: a torch module in eval mode, or a callable
    :class:`~lepton_lab.compress.OnnxModel` (an onnxruntime session) for ONNX."""
    if format == "onnx":
        from ._formats import OnnxModel

        return OnnxModel(data, device=device)
    import torch

    module = torch.load(io.BytesIO(data), weights_only=False, map_location=device)
    return module.eval() if hasattr(module, "eval") else module


def load_model(ref: str, device: str = "cpu") -> Any:
    """Load ``name[:version]`` from the registry (checksum verified)."""
    rec, data = read_artifact(ref)
    return load_bytes(data, rec.format, device)


def register_trained(names: Any, namespace: dict[str, Any], *, run_id: str,
                     run_name: str | None = None,
                     checkpoint: str | None = None) -> list[ModelRecord]:
    """Register the ``torch.nn.Module`` values a training run brought back (``names`` in
    ``namespace``) as versions with the run as their lineage. With one module and a run
    name, the model takes the run's name; otherwise the variable's. Unchanged weights are
    not registered twice."""
    import torch

    modules = [(n, namespace[n]) for n in sorted(names)
               if isinstance(namespace.get(n), torch.nn.Module)]
    out = []
    for var, module in modules:
        name = run_name if run_name and len(modules) == 1 else var
        try:
            check_name(name)
        except LeptonUsageError:
            continue          # e.g. `_net`: not a registry name; `%lepton register` names it
        out.append(register_module(module, name, kind="trained", run_id=run_id,
                                   checkpoint=checkpoint))
    return out


def register_run_models(names: Any, namespace: dict[str, Any], *, run_id: str,
                        run_name: str | None, checkpoint: str | None,
                        say: Callable[[str], Any]) -> None:
    """:func:`register_trained`, telling the user through ``say`` what was registered, or why
    nothing was: the run itself succeeded, so a registry problem must not fail it."""
    try:
        made = register_trained(names, namespace, run_id=run_id, run_name=run_name,
                                checkpoint=checkpoint)
    except Exception as exc:  # noqa: BLE001 - the run succeeded; say why it is not registered
        say(f"the trained model was not registered: {str(exc).splitlines()[0][:200]}")
        return
    if made:
        say("registered " + ", ".join(m.ref for m in made) + " (`%lepton models`; "
            "`%lepton compress NAME` / `%lepton deploy NAME`)")
