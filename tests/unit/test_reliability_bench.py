"""bench/reliability.py --short, as `make test` promises: the Ray-free checks run, each row
has its figure, and a failing check would make the script exit non-zero."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_short_reliability_report_has_a_figure_per_check(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "reliability.py"), "--short",
                           "--out", str(tmp_path), "--timeout", "900"],
                          capture_output=True, text=True, timeout=1000, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = tmp_path.glob("reliability-*-short.json")
    rows = {r["check"]: r for r in json.loads(result.read_text())["rows"]}
    assert set(rows) == {"magic_line_fuzz", "rest_fuzz", "endpoint_body_fuzz",
                         "unauthenticated_rest_calls", "store_concurrent_writers",
                         "store_writer_sigkilled"}
    for name, row in rows.items():
        assert row["passed"] and row["tried"] > 0, (name, row)
        assert row.get("survived", row["tried"]) == row["tried"] or name.startswith("unauth")
    assert rows["unauthenticated_rest_calls"]["succeeded"] == 0
    assert rows["store_concurrent_writers"]["data_lost"] == 0
    md = next(tmp_path.glob("reliability-*-short.md")).read_text()
    assert re.search(r"\| rest_fuzz +\|", md) and "FAIL" not in md
