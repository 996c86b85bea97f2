"""``lepton tls``: the embedded cluster's TLS files, and what another node or process needs.

    lepton up --tls                      the embedded cluster in Ray's TLS mode
    lepton tls join-command [--host H]   the command a second node runs to join it
    lepton tls env [--host H]            export lines: TLS for a kernel or a `ray start`
    lepton tls status                    where the files are, and whether the cluster uses them
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from .. import _tls, cluster
from ..errors import LeptonUsageError


def add_parser(sub: Any) -> None:
    t = sub.add_parser("tls", help="encrypted cluster traffic: certificates and join commands")
    t.add_argument("action", choices=["join-command", "env", "status"])
    t.add_argument("--host", default=None,
                   help="the address of the node the files are for (default: this machine)")
    t.add_argument("--address", default=None,
                   help="the head to join (default: the running embedded cluster)")


def _env_for(host: str | None) -> dict[str, str]:
    if host is None:
        return _tls.ensure_local()
    files = _tls.for_node(host)
    return {"RAY_USE_TLS": "1", **{k: v for k, v in files.items() if k.startswith("RAY_")}}


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def main(args: argparse.Namespace) -> int:
    if args.action == "status":
        state = cluster.embedded_state()
        made = (_tls.tls_dir() / "ca.crt").exists()
        print(f"TLS files: {_tls.tls_dir()} (CA {'made' if made else 'not made yet'})")
        if state:
            print(f"embedded Ray at {state['address']}: TLS {'on' if state.get('tls') else 'off'}")
        else:
            print("no embedded cluster is running (`lepton up --tls` starts one with TLS)")
        return 0
    env = _env_for(args.host)
    if args.action == "env":
        print(_exports(env))
        return 0
    address = args.address
    token = None
    if address is None:
        state = cluster.embedded_state()
        if not state:
            raise LeptonUsageError("no embedded cluster is running: `lepton up --tls` first, "
                                   "or give the head with --address HOST:PORT")
        if not state.get("tls"):
            raise LeptonUsageError(f"the embedded cluster at {state['address']} runs without "
                                   "TLS: `lepton down`, then `lepton up --tls`")
        address, token = state["address"], str(cluster._embedded_token_path())
    node_ip = args.host or "127.0.0.1"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token} if token else {}
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, **auth}.items())
    files = [env["RAY_TLS_CA_CERT"], env["RAY_TLS_SERVER_CERT"], env["RAY_TLS_SERVER_KEY"]]
    if token:
        files.append(token)
    print("# on the node that joins: these files must be there, at these paths, readable by")
    print("# its owner only (copy them over a secure channel; node.key is that node's key):")
    for path in files:
        print(f"#   {path}")
    if address.startswith("127.") and args.host not in (None, "127.0.0.1", "localhost"):
        print("# note: the embedded head listens on loopback, so only nodes on this machine")
        print("# reach it; see docs/reliability.md (encrypted cluster traffic) for a shared head")
    print(f"{line} ray start --address {shlex.quote(address)} --node-ip-address "
          f"{shlex.quote(node_ip)}")
    return 0
