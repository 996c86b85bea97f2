"""Every GPU path in one call (issue 15): for the few device-minutes a GPU host is lent.

On a machine with an NVIDIA GPU (and Ray: the bundle of ../shared/gpu/pack.sh, unpacked by
bench/gpu_check.sh), in at most about 8 minutes::

    bash bench/gpu_check.sh                 # writes $OUT/gpu_check.json and gpu_check.md

Parts, each in its own process with its own time limit (one failing does not stop the
others): the GPU tests (tests/gpu), a ``%%lepton --gpus 1`` cell, an NCCL warm group, bf16
training against a raw torch loop, CuPy against NumPy preprocessing, bf16/fp8 compression,
a GPU serving replica, and ``--strategy fsdp`` with NCCL. ``--dry-run`` runs the same code
on the CPU at toy sizes (``make test`` does, so the script is known to work before a GPU is
ever lent); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LIMITS = {"gpu_tests": 150, "cell": 60, "nccl_group": 60, "bf16_train": 120,
          "cupy_preprocess": 45, "compress": 90, "serve_gpu": 90, "fsdp": 120}


def _child(part: str, env: dict[str, str], limit: float) -> dict[str, Any]:
    t0 = time.monotonic()
    if part == "gpu_tests":
        cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider"]
        if env.get("LEPTON_GPU_CHECK_DRY") == "1":
            cmd.append("--collect-only")
    else:
        cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--part", part]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-800:]
        return {"ok": False, "error": f"timed out after {limit:.0f} s",
                "tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    out: dict[str, Any] = {"ok": proc.returncode == 0, "seconds": round(time.monotonic() - t0, 1)}
    if part == "gpu_tests":
        out["summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
    elif proc.returncode == 0:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]
        out["tail"] = (proc.stdout + proc.stderr)[-1500:]
    return out


def _table(results: dict[str, Any], facts: dict[str, Any]) -> str:
    lines = [f"GPU check on {facts['device']}, {facts['date']} ({'dry run on the CPU' if facts['dry'] else 'GPU'})",
             "", "| part | ok | s | figures |", "|---|---|---|---|"]
    for part, r in results.items():
        figures = {k: v for k, v in r.items() if k not in ("ok", "seconds", "tail", "error")}
        text = json.dumps(figures)[:300] if r["ok"] else f"FAILED: {r.get('error')}"
        lines.append(f"| {part} | {'yes' if r['ok'] else 'NO'} | {r.get('seconds', '-')} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "no GPU"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "no GPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the script")
    p.add_argument("--out", default=os.environ.get("OUT") or str(BENCH / "results"),
                   help="folder for gpu_check.json and gpu_check.md (default $OUT)")
    p.add_argument("--parts", default=",".join(LIMITS), help="comma-separated parts to run")
    p.add_argument("--part", help=argparse.SUPPRESS)        # a child process: one part
    args = p.parse_args(argv)
    if args.part:
        from _gpu_parts import PARTS

        if os.environ.get("LEPTON_GPU_CHECK_BREAK") == args.part:   # the tests' failing part
            raise SystemExit(f"{args.part} broken on purpose (LEPTON_GPU_CHECK_BREAK)")
        print(json.dumps(PARTS[args.part]()), flush=True)
        return 0
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(LIMITS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(LIMITS)}")
    env = dict(os.environ, LEPTON_GPU_CHECK_DRY="1" if args.dry_run else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(BENCH),
                                                        os.environ.get("PYTHONPATH")])))
    own_home = "LEPTON_HOME" not in os.environ      # else: that home's cluster (the tests')
    if own_home:
        env["LEPTON_HOME"] = tempfile.mkdtemp(prefix="lepton-gpu-check-")
    facts = {"device": "cpu (dry run)" if args.dry_run else _device(),
             "date": time.strftime("%Y-%m-%d %H:%M"), "dry": args.dry_run,
             "host_cpus": os.cpu_count()}
    results: dict[str, Any] = {}
    try:
        for part in parts:
            print(f"gpu_check: {part} ...", file=sys.stderr, flush=True)
            results[part] = _child(part, env, LIMITS[part] * (2 if args.dry_run else 1))
            print(f"gpu_check: {part}: {'ok' if results[part]['ok'] else 'FAILED'}",
                  file=sys.stderr, flush=True)
    finally:
        if own_home:
            subprocess.run([sys.executable, "-m", "lepton_lab.cli", "cluster", "stop"],
                           cwd=ROOT, env=env, capture_output=True, timeout=60)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"facts": facts, "results": results},
                                                   indent=1, default=str))
    (out / "gpu_check.md").write_text(_table(results, facts))
    print(_table(results, facts))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
