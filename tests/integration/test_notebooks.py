"""The reference notebooks in magics/ and the quickstart template, executed by real kernels
(nbclient) against the shared cluster."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted((REPO / "magics").glob("*.ipynb")) + [REPO / "templates" / "quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_executes(path: Path, cluster):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            )  # the kernel inherits LEPTON_HOME from os.environ
    client.execute()  # raises CellExecutionError on an unexpected error
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        errors = [o for o in outs if o.get("output_type") == "error"]
        # IPython shows a UsageError as one stderr line rather than an error output
        usage = [o for o in outs if o.get("output_type") == "stream"
                 and o.get("name") == "stderr" and "UsageError:" in o.get("text", "")]
        if "raises-exception" in cell.get("metadata", {}).get("tags", []):
            assert errors or usage, f"this cell should have failed: {cell.source[:80]!r}"
        for err in errors:  # an expected error is one clear line or the remote traceback
            assert len(err["traceback"]) <= 12, err
