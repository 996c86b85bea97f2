"""``%lepton compress|models|register|deploy|endpoints|predict|undeploy``: thin adapters to
:mod:`lepton_lab.compress`, :mod:`lepton_lab.registry` and :mod:`lepton_lab.serve`
(parsing, calling the core, printing)."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

from ..errors import LeptonUsageError
from ._parsing import UsageParser, real

COMMANDS = ("compress", "models", "register", "deploy", "endpoints", "predict", "undeploy",
            "redeploy")

HELP = """\
  compress MODEL [flags]  prune / quantize / export a model on the cluster; report + plot;
                          each variant becomes a new registry version (`compress -h`)
  register VAR NAME [--run RUN]   put a notebook model into the registry as NAME:next
  models [NAME]           the registry: name:version, kind, size, params, lineage
  deploy MODEL[:V] --name NAME [--replicas N] [--gpus G] [--max-batch B]
         [--batch-wait-ms T] [--autoscale MIN:MAX]   serve it on Ray Serve (token auth)
  endpoints               deployed endpoints: URL, model, status, replicas
  predict NAME DATA       query an endpoint with a notebook array (uses this session's token)
  undeploy NAME           delete an endpoint
  redeploy NAME           serve a LOST endpoint again (its cluster or head was restarted):
                          the same model version, settings and token
"""

EXAMPLES = """examples:
  %lepton compress model --prune 0.5 --quantize int8 --calib train --eval test --export onnx
  %lepton compress digits:1 --quantize bf16 --target gpu
  %lepton register model digits --run 1123-ab12cd34
  info = %lepton deploy digits --name digits-api --max-batch 32 --autoscale 1:4
  %lepton predict digits-api X_test[:8]
"""

#: Tokens of endpoints deployed from this kernel (never printed, never stored in clear).
_TOKENS: dict[str, str] = {}


@functools.lru_cache(maxsize=None)
def parser(command: str) -> UsageParser:
    p = UsageParser(prog=f"%lepton {command}", add_help=False, allow_abbrev=False,
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    if command == "compress":
        p.description = ("Shrink a model on the cluster: structured pruning (channels really "
                         "removed), fine-tuning, int8/fp8/bf16 quantization, ONNX export; a "
                         "before/after report with a plot; variants go into the registry.")
        p.add_argument("model", nargs="?", help="a notebook variable or a registry "
                                                "name[:version]")
        p.add_argument("--prune", type=real, default=0.0, metavar="RATIO",
                       help="fraction of channels/neurons to remove (0..0.95); default 0")
        p.add_argument("--quantize", default="none", choices=["int8", "fp8", "bf16", "none"],
                       help="weights/activations precision; fp8 needs an H100-class GPU")
        p.add_argument("--calib", metavar="DATA",
                       help="notebook variable: (X, y) for fine-tuning and calibration")
        p.add_argument("--eval", metavar="DATA", help="notebook variable: (X, y) to measure "
                                                      "accuracy on")
        p.add_argument("--finetune-epochs", type=int, default=2, metavar="K",
                       help="fine-tune after pruning for K epochs on --calib; default 2")
        p.add_argument("--export", choices=["onnx", "none"], default="none",
                       help="also export to ONNX (checked in onnxruntime)")
        p.add_argument("--target", choices=["cpu", "gpu"], default="cpu",
                       help="where it will run: latencies are measured there; default cpu")
        p.add_argument("--name", help="registry name for the results (default: the model's)")
        p.add_argument("--run", metavar="RUN", help="training run the model came from "
                                                    "(lineage)")
        p.add_argument("--timeout", type=real, metavar="SECONDS")
    elif command == "register":
        p.add_argument("var", nargs="?", help="notebook variable holding a torch.nn.Module")
        p.add_argument("name", nargs="?", help="registry name")
        p.add_argument("--run", metavar="RUN", help="training run it came from (lineage)")
    elif command == "models":
        p.add_argument("name", nargs="?", help="only this model's versions")
    elif command == "deploy":
        p.add_argument("model", nargs="?", help="registry name[:version] (default latest)")
        p.add_argument("--name", help="endpoint name (URL path); default: the model's name")
        p.add_argument("--replicas", type=int, default=1, metavar="N")
        p.add_argument("--gpus", type=real, default=0.0, metavar="G",
                       help="GPUs per replica")
        p.add_argument("--cpus", type=real, default=1.0, metavar="C",
                       help="CPUs per replica")
        p.add_argument("--max-batch", type=int, default=32, metavar="B",
                       help="largest dynamic batch; 1 turns batching off")
        p.add_argument("--batch-wait-ms", type=real, default=5.0, metavar="T",
                       help="how long a batch that is not full waits for requests already "
                            "being read (a lone request never waits)")
        p.add_argument("--autoscale", metavar="MIN:MAX", help="replicas scale between MIN "
                                                              "and MAX with load")
        p.add_argument("--timeout", type=real, default=180.0, metavar="SECONDS")
    elif command == "predict":
        p.add_argument("endpoint", nargs="?")
        p.add_argument("data", nargs="?", help="a notebook expression: array, tensor or list")
        p.add_argument("--token-var", metavar="VAR",
                       help="notebook variable holding the token (default: this session's)")
    elif command in ("undeploy", "redeploy"):
        p.add_argument("endpoint", nargs="?")
        if command == "redeploy":
            p.add_argument("--timeout", type=real, default=180.0, metavar="SECONDS")
    return p


def _required(args: argparse.Namespace, command: str, *names: str) -> None:
    missing = [n for n in names if getattr(args, n) in (None, "")]
    if missing:
        raise LeptonUsageError(f"%lepton {command} needs {' and '.join(m.upper() for m in missing)}"
                               f"; see `%lepton {command} -h`")


def run(command: str, words: list[str], shell: Any, origin: str | None) -> Any:
    """Run one model command; returns what the magic returns (shown as the cell's result)."""
    args = parser(command).parse_args(words)
    if args.help:
        print(parser(command).format_help())
        return None
    return globals()[f"_{command}"](args, shell, origin)


def _compress(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "compress", "model")
    from ..compress import CompressSettings
    from ..compress._job import compress_model
    from ._display import CellSink

    settings = CompressSettings(prune=args.prune,
                                quantize=None if args.quantize == "none" else args.quantize,
                                finetune_epochs=args.finetune_epochs,
                                export=None if args.export == "none" else args.export,
                                target=args.target)
    out = compress_model(args.model, settings, namespace=shell.user_ns, sink=CellSink(),
                         calib=args.calib, eval=args.eval, name=args.name, from_run=args.run,
                         timeout=args.timeout, origin=origin)
    return None if out.best is None else out.best.ref


def _register(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "register", "var", "name")
    from ..registry import register_module
    from ..store import get_store

    if args.var not in shell.user_ns:
        raise LeptonUsageError(f"no variable {args.var!r} in the notebook")
    if args.run:
        get_store().get_run(args.run)
    rec = register_module(shell.user_ns[args.var], args.name,
                          kind="trained" if args.run else "imported", run_id=args.run)
    print(f"lepton: registered {rec.ref} ({_size(rec.size)}, {rec.params or 0:,} params)")
    return rec.ref


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_models(models: list[Any]) -> str:
    if not models:
        return "no models registered yet; `%lepton register VAR NAME` or `%lepton compress`"
    lines = [f"{'model':<22} {'kind':<10} {'format':<6} {'size':>10} {'params':>10}  "
             f"{'age':>7}  lineage"]
    for m in models:
        lineage = ", ".join(x for x in (
            f"from {m.parent}" if m.parent else "", f"run {m.run_id}" if m.run_id else "",
            str(m.settings.get("variant") or "")) if x)
        lines.append(f"{m.ref:<22} {m.kind:<10} {m.format:<6} {_size(m.size):>10} "
                     f"{(m.params or 0):>10,}  {time.time() - m.created:>6.0f}s  {lineage}")
    return "\n".join(lines)


def _models(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    from ..store import get_store

    print(format_models(get_store().list_models(args.name)))
    return None


def _autoscale(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi) or int(hi) < 1:
        raise LeptonUsageError(f"--autoscale {text!r} must be MIN:MAX replicas, e.g. 1:4")
    return int(lo), int(hi)


def _deploy(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "deploy", "model")
    from ..serve import DeploySpec, deploy
    from ..store import split_ref

    name = args.name or split_ref(args.model)[0]
    spec = DeploySpec(name=name, replicas=args.replicas, gpus=args.gpus, cpus=args.cpus,
                      max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                      autoscale=_autoscale(args.autoscale))
    info = deploy(args.model, spec, timeout=args.timeout)
    print(f"lepton: {info.model_ref} is served at {info.url} (POST {info.url}/predict, "
          "JSON or .npy)")
    if info.token:
        _TOKENS[info.name] = info.token
        print(f"lepton: its token {info.token_hint} is shown only here, masked; it is in the "
              "returned object (`info = %lepton deploy ...`, then `info.token`) and this "
              f"kernel uses it for `%lepton predict {info.name}`")
    else:
        print(f"lepton: {info.name} was updated in place and keeps its token")
    return info


def _endpoints(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    from ..serve import list_endpoints

    eps = list_endpoints()
    if not eps:
        print("no endpoints; `%lepton deploy MODEL --name NAME` creates one")
        return None
    lines = [f"{'endpoint':<18} {'model':<16} {'status':<12} {'replicas':<12} "
             f"{'token':<10} url"]
    for e in eps:
        reps = ", ".join(f"{n} {s.lower()}" for s, n in (e.get("replicas") or {}).items())
        lines.append(f"{e['name']:<18} {e['model']:<16} {str(e.get('live') or e.get('status')):<12} "
                     f"{reps or '-':<12} {str(e.get('token_hint') or ''):<10} "
                     f"{e.get('url') or ''}")
    print("\n".join(lines))
    return None


def _predict(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "predict", "endpoint", "data")
    from ..serve import predict

    try:
        data = eval(args.data, shell.user_ns)  # noqa: S307 - the user's own notebook expression
    except Exception as exc:  # noqa: BLE001 - a one-line error for a bad expression
        raise LeptonUsageError(f"DATA {args.data!r} could not be evaluated in the notebook: "
                               f"{type(exc).__name__}: {exc}") from None
    if args.token_var:
        token = shell.user_ns.get(args.token_var)
        token = getattr(token, "token", token)
    else:
        token = _TOKENS.get(args.endpoint)
    if not token:
        raise LeptonUsageError(f"no token for {args.endpoint!r} in this session: pass "
                               "--token-var VAR (a variable holding the token or the "
                               "deploy result)")
    return predict(args.endpoint, data, token=token)


def _redeploy(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "redeploy", "endpoint")
    from ..serve import redeploy

    info = redeploy(args.endpoint, timeout=args.timeout)
    print(f"lepton: {info.model_ref} is served again at {info.url}, with the same token")
    return info


def _undeploy(args: argparse.Namespace, shell: Any, origin: str | None) -> Any:
    _required(args, "undeploy", "endpoint")
    from ..serve import undeploy

    undeploy(args.endpoint)
    _TOKENS.pop(args.endpoint, None)
    print(f"lepton: endpoint {args.endpoint} deleted")
    return None
