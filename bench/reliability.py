"""The figures of docs/reliability.md: run the fault and bad-input tests, collect what each
one measured, and write one table (JSON and markdown).

    python bench/reliability.py              # every check: fuzzers at 200 examples per
                                             # route/test, the cluster faults (about 15 min)
    python bench/reliability.py --short      # the Ray-free part with small fuzz counts
                                             # (about 1 min; `make test` runs this)

The tests append their figures to ``LEPTON_RELIABILITY_LOG`` (tests/_reliability.py); a
check whose test failed is reported as failed, with no figure taken from it. Results go to
``bench/results/reliability-<date>.{json,md}`` (``--out`` to put them elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from _harness import format_facts, machine_facts, table  # noqa: E402

# (check, what is promised, the test that checks it, in the short form?)
CHECKS = [
    ("magic_line_fuzz", "every magic line parses or is one LeptonUsageError line",
     "tests/unit/test_fuzz_magics.py", True),
    ("rest_fuzz", "no REST route answers 500; every error is one JSON line",
     "tests/unit/test_fuzz_rest.py", True),
    ("endpoint_body_fuzz", "the request parser answers 400/413/415 with one line, never "
     "unpickles", "tests/unit/test_fuzz_bodies.py", True),
    ("unauthenticated_rest_calls", "no REST route answers without the server's token",
     "tests/unit/test_server_api.py::test_every_route_refuses_requests_without_credentials",
     True),
    ("store_concurrent_writers", "8 processes write at once: nothing lost or duplicated",
     "tests/unit/test_store_faults.py::test_eight_processes_write_at_once_and_lose_nothing",
     True),
    ("store_writer_sigkilled", "a writer killed mid-write leaves the store consistent",
     "tests/unit/test_store_faults.py::test_writer_killed_mid_write_leaves_a_consistent_store",
     True),
    ("head_killed", "a killed head is one line within 10 s; the kernel goes on after a restart",
     "tests/integration/test_head_death.py::"
     "test_a_killed_head_is_one_line_and_the_kernel_goes_on_after_a_restart", False),
    ("endpoint_head_killed", "an endpoint of a killed head is LOST; `%lepton redeploy` serves "
     "it again with the same token", "tests/integration/test_head_death.py::"
     "test_an_endpoint_of_a_killed_head_is_lost_and_redeployed_with_its_token", False),
    ("kernel_restart_detached", "10 detached jobs across a kernel restart: every one attached "
     "with its output and values", "tests/integration/test_kernels.py::"
     "test_ten_detached_jobs_are_all_attached_after_a_kernel_restart", False),
    ("tls_plain_client_refused", "a TLS cluster refuses a process without its certificates in "
     "one line within 10 s; cells, groups and training run over TLS",
     "tests/integration/test_tls.py", False),
    ("endpoint_body_fuzz_http", "bad bodies at a live endpoint: only 400/413, no replica "
     "restarts", "tests/integration/test_serve.py", False),
    ("unauthenticated_endpoint_calls", "no endpoint answers without its token",
     "tests/integration/test_serve.py", False),
    ("replica_killed_under_load", "a serving replica killed under 2,000 requests: <= 0.5 % fail",
     "tests/integration/test_serve.py", False),
    ("training_worker_killed", "a killed training worker resumes from its checkpoint",
     "tests/integration/test_train_job.py::test_a_killed_worker_resumes_from_its_checkpoint",
     False),
    ("node_killed", "a whole node lost mid-run: elastic training goes on",
     "tests/integration/test_multinode.py::test_elastic_training_goes_on_after_a_node_is_lost",
     False),
]


def _run(tests: list[str], log: Path, examples: int, junit: Path, timeout: float) -> int:
    env = dict(os.environ, LEPTON_RELIABILITY_LOG=str(log), LEPTON_FUZZ_EXAMPLES=str(examples),
               LEPTON_STORE_WRITES="25" if examples < 100 else "200")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml",
           str(junit), *tests]
    try:
        return subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"reliability: the tests ran past {timeout:.0f} s", file=sys.stderr)
        return 124


def _outcomes(junit: Path) -> dict[str, bool]:
    """test id prefix -> passed, from pytest's junit XML (missing file: nothing passed)."""
    out: dict[str, bool] = {}
    if not junit.exists():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        ok = not any(child.tag in ("failure", "error") for child in case)
        for key in (path, f"{path}::{case.get('name', '').split('[')[0]}"):
            out[key] = out.get(key, True) and ok
    return out


def collect(short: bool, workdir: Path, timeout: float) -> dict:
    chosen = [c for c in CHECKS if c[3] or not short]
    tests = sorted({c[2] for c in chosen})
    log, junit = workdir / "log.jsonl", workdir / "junit.xml"
    t0 = time.monotonic()
    rc = _run(tests, log, 20 if short else 200, junit, timeout)
    figures: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            figures[rec.pop("check")] = rec
    passed = _outcomes(junit)
    rows = []
    for check, promise, test, _short in chosen:
        ok = passed.get(test, False)
        fig = figures.get(check, {}) if ok else {}
        rows.append({"check": check, "promise": promise, "test": test, "passed": ok,
                     **{k: v for k, v in fig.items() if k != "ts"}})
    return {"facts": machine_facts(), "short": short, "pytest_rc": rc,
            "seconds": round(time.monotonic() - t0, 1), "rows": rows}


def _cell(row: dict, key: str) -> str:
    return "" if row.get(key) is None else str(row[key])


def markdown(res: dict) -> str:
    header = ["check", "promise", "test", "result", "tried", "survived", "failed/succeeded",
              "data lost", "figure"]
    body = []
    for r in res["rows"]:
        extra = {k: v for k, v in r.items() if k not in (
            "check", "promise", "test", "passed", "tried", "survived", "failed", "succeeded",
            "data_lost")}
        bad = r.get("failed", r.get("succeeded"))
        body.append([r["check"], r["promise"], f"`{r['test']}`",
                     "pass" if r["passed"] else "FAIL", _cell(r, "tried"), _cell(r, "survived"),
                     "" if bad is None else str(bad), _cell(r, "data_lost"),
                     ", ".join(f"{k} {v}" for k, v in extra.items())])
    form = "short form (Ray-free, small fuzz counts)" if res["short"] else "full form"
    return (f"# Reliability checks, {form}\n\n{format_facts(res['facts'])}\n\n"
            f"pytest exit code {res['pytest_rc']}, {res['seconds']} s\n\n"
            + table(body, header) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the Ray-free checks, small counts")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                    help="folder for reliability-<date>.{json,md}")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for all the tests")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lepton-reliability-") as tmp:
        res = collect(args.short, Path(tmp), args.timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"reliability-{datetime.date.today().isoformat()}" + ("-short" if args.short else "")
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0 if all(r["passed"] for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
