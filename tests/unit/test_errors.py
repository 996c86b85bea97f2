"""One error hierarchy, rendered for IPython (lepton_lab/errors.py)."""

from __future__ import annotations

import inspect

import pytest

from lepton_lab import errors
from lepton_lab.errors import CellSyntaxError, LeptonError, LeptonUsageError, RemoteError
from lepton_lab.remote._analysis import analyze

ONE_LINERS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
              if issubclass(cls, LeptonError) and cls not in (RemoteError, CellSyntaxError)]


def test_the_hierarchy_is_complete():
    names = {cls.__name__ for cls in ONE_LINERS}
    assert names == {"LeptonError", "LeptonUsageError", "ClusterUnavailable",
                     "InfeasibleRequest", "VersionMismatch", "SerializationError",
                     "JobNotFound", "JobCancelled", "MissingDependency", "CellTimeout",
                     "WorkerDied", "StoreUnavailable"}


@pytest.mark.parametrize("cls", ONE_LINERS, ids=lambda c: c.__name__)
def test_every_error_renders_one_line(cls):
    exc = cls("something went wrong; do this instead")
    rendered = exc._render_traceback_()
    assert rendered == [f"{cls.__name__}: something went wrong; do this instead"]


@pytest.mark.parametrize("cls", ONE_LINERS + [RemoteError, CellSyntaxError],
                         ids=lambda c: c.__name__)
def test_http_status_is_specific(cls):
    assert 400 <= cls.http_status < 600
    if cls is not LeptonError:
        assert cls.http_status != 500, f"{cls.__name__} falls back to a blanket 500"


def test_usage_errors_are_value_errors():
    assert issubclass(LeptonUsageError, ValueError)
    for cls in (errors.InfeasibleRequest, errors.SerializationError, errors.JobNotFound,
                CellSyntaxError):
        assert issubclass(cls, LeptonUsageError)


def test_remote_error_renders_the_remote_traceback():
    tb = ["Traceback (most recent call last):\n",
          "  Cell line 3, in <module>\n    raise ValueError('boom')\n",
          "ValueError: boom\n"]
    exc = RemoteError("ValueError", "boom", tb, where="rank 1")
    assert str(exc) == "[rank 1] ValueError: boom"
    assert (exc.ename, exc.evalue, exc.traceback) == ("ValueError", "boom", tb)
    rendered = exc._render_traceback_()
    assert rendered[0] == "Remote traceback (rank 1)"
    assert rendered[1:] == [line.rstrip("\n") for line in tb]
    plain = RemoteError("KeyError", "'k'", [])
    assert str(plain) == "KeyError: 'k'"
    assert plain._render_traceback_() == ["Remote traceback"]


def syntax_error(body: str) -> SyntaxError:
    with pytest.raises(SyntaxError) as info:
        analyze(body)
    return info.value


def test_cell_syntax_error_renders_cell_line_and_caret():
    se = syntax_error("a = 1\nb = 2 +* 3\n")
    exc = CellSyntaxError(se)
    assert exc.lineno == 3
    assert "(cell line 3); nothing was sent" in str(exc)
    lines = exc._render_traceback_()
    assert lines[0] == "  Cell line 3"
    assert lines[1] == "    b = 2 +* 3"
    caret = lines[2]
    assert caret.strip() == "^"
    column = caret.index("^") - 4
    assert lines[1][4:][column] == se.text[se.offset - 1]
    assert lines[-1].startswith("SyntaxError: ") and "nothing was sent" in lines[-1]


def test_cell_syntax_error_caret_with_indentation():
    se = syntax_error("if True:\n        x = (1 +* 2)\n")
    lines = CellSyntaxError(se)._render_traceback_()
    assert lines[0] == "  Cell line 3"
    assert lines[1] == "    x = (1 +* 2)"          # shown without its indentation
    column = lines[2].index("^") - 4
    assert lines[1][4:][column] == se.text[se.offset - 1]


def test_cell_syntax_error_without_text():
    exc = CellSyntaxError(SyntaxError("bad", ("<x>", 7, None, None)))
    assert exc._render_traceback_() == ["  Cell line 7", "SyntaxError: bad (nothing was sent "
                                        "to the cluster)"]
