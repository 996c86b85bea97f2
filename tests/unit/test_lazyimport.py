"""The deferred import that saves every process importing Ray more than a second
(lepton_lab/_lazyimport.py), and the sitecustomize that does it in the embedded cluster's
processes (lepton_lab/_site/). Each check runs in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lepton_lab

SITE = Path(lepton_lab.__file__).resolve().parent / "_site"
needs_module = pytest.mark.skipif(importlib.util.find_spec("lark") is None or
                                  "rfc3987_syntax" not in sys.modules and
                                  importlib.util.find_spec("rfc3987_syntax") is None,
                                  reason="rfc3987-syntax is not installed here")


def python(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@needs_module
def test_import_ray_after_lepton_lab_does_not_build_the_rfc3987_parser():
    out = python("""
        import importlib.util, sys
        import lepton_lab, ray, jsonschema
        print('lark' in sys.modules, getattr(sys.modules['rfc3987_syntax'],
                                             '__lepton_deferred__', False),
              importlib.util.find_spec('rfc3987_syntax') is not None)   # still "installed"
    """)
    assert out == "False True True"


@needs_module
def test_the_deferred_module_still_validates_iris_with_the_real_parser():
    out = python("""
        import sys
        import lepton_lab, jsonschema
        fc = jsonschema.FormatChecker()
        print(fc.conforms('https://example.com/ä?q=1#f', 'iri'),
              fc.conforms('not an iri', 'iri'), fc.conforms('../a/b?c', 'iri-reference'),
              'lark' in sys.modules)
        from rfc3987_syntax import make_syntax_validator   # any other name: loaded at once
        print(callable(make_syntax_validator),
              getattr(sys.modules['rfc3987_syntax'], '__lepton_deferred__', False))
    """)
    assert out.splitlines() == ["True False True True", "True False"]


@needs_module
def test_the_clusters_sitecustomize_defers_and_runs_the_one_it_shadows(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("MARK = 'the user\\'s own sitecustomize ran'\n")
    code = """
        import sys
        import ray
        print('lark' in sys.modules, getattr(sys.modules['sitecustomize'], 'MARK', None))
    """
    out = python(code, PYTHONPATH=os.pathsep.join([str(SITE), str(other)]))
    assert out == "False the user's own sitecustomize ran"
    out = python(code, PYTHONPATH=str(SITE))              # none to chain to: no error
    assert out == "False None"


def test_nothing_is_deferred_when_the_module_is_not_installed():
    out = python("""
        import sys
        from lepton_lab import _lazyimport
        _lazyimport.DEFERRED = ('no_such_module_here',)
        _lazyimport.defer_slow_imports()
        print('no_such_module_here' in sys.modules)
    """)
    assert out == "False"
