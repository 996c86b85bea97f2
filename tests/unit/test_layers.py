"""The layering that docs/architecture.md draws, checked where it can break.

``make test`` runs ``lint-imports`` over the contracts in pyproject.toml. These tests check
that the contracts really bite (an upward import in a copy of the package breaks them) and
what the linter cannot see: importing the core must not load a notebook or web framework.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ("IPython", "ipywidgets", "tornado", "voila")
ADAPTERS = ("lepton_lab.notebook", "lepton_lab.cli", "lepton_lab.server", "lepton_lab.dashboard")


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    return str(exe)


def _core_modules() -> list[str]:
    import lepton_lab

    names = []
    for mod in pkgutil.walk_packages(lepton_lab.__path__, "lepton_lab."):
        if not mod.name.startswith(ADAPTERS) and mod.name != "lepton_lab.labextension":
            names.append(mod.name)
    return names


def test_importing_the_core_loads_no_notebook_or_web_framework():
    core = _core_modules()
    assert "lepton_lab.remote._executor" in core and "lepton_lab.training._run" in core
    # papermill (the pipeline engine's base) brings tornado with jupyter_client: that is
    # papermill's import, so it is loaded first and only what the core adds is counted
    code = ("import sys\n"
            "import papermill\n"
            f"before = {{m for m in {UI!r} if m in sys.modules}}\n"
            f"for name in {core!r}:\n"
            "    __import__(name)\n"
            f"after = {{m for m in {UI!r} if m in sys.modules}}\n"
            "print(sorted(before), sorted(after - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['tornado'] []", out.stdout


def _copy_and_lint(tmp_path: Path, edit: tuple[str, str] | None = None):
    """Copy the package and its contracts to ``tmp_path``, append ``edit[1]`` to the module
    file ``edit[0]``, and run ``lint-imports`` over the copy."""
    exe = _lint_imports()
    copy = tmp_path / "lepton_lab"
    shutil.copytree(ROOT / "lepton_lab", copy,
                    ignore=shutil.ignore_patterns("labextension", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if edit is not None:
        target = copy / edit[0]
        target.write_text(target.read_text() + "\n" + edit[1])
    return subprocess.run([exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})


def test_lint_imports_passes_on_an_unchanged_copy(tmp_path):
    out = _copy_and_lint(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "broken" not in out.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize("importer, line", [
    # ground importing a feature; remote importing training (the old knot); a feature
    # importing another feature; a feature importing an adapter; the core importing IPython
    ("store/_json.py", "from lepton_lab.compress import OnnxModel\n"),
    ("remote/_jobs.py", "from lepton_lab.training._run import TrainSpec\n"),
    ("serve/_auth.py", "import lepton_lab.training\n"),
    ("pipeline/_env.py", "from lepton_lab.notebook import magics\n"),
    ("compress/_report.py", "import IPython.display\n"),
])
def test_lint_imports_fails_on_a_forbidden_import(tmp_path, importer, line):
    out = _copy_and_lint(tmp_path, (importer, line))
    assert out.returncode == 1, out.stdout[-3000:]
    assert "BROKEN" in out.stdout
    assert "lepton_lab." + importer[:-3].replace("/", ".") in out.stdout
