"""The IPython adapter: flag parsing and the magics in a real InteractiveShell, without Ray."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

from lepton_lab import cluster
from lepton_lab.errors import CellSyntaxError, LeptonUsageError
from lepton_lab.notebook.magics import LeptonMagics, parse_cell_line, parse_line
from lepton_lab.remote._spec import CellSpec

CELL_FLAGS = ["--cpus", "--gpus", "--memory", "--workers", "--timeout", "--name", "--detach",
              "--out", "--no-pull", "--env", "--all-ranks", "--help"]


# -- %%lepton flags -------------------------------------------------------------------------
@pytest.mark.parametrize("line, expected", [
    ("", CellSpec()),
    ("   ", CellSpec()),
    ("--cpus 2 --gpus 0.5 --memory 4GiB --timeout 60 --name sweep-1 --out model,history "
     "--env OMP_NUM_THREADS=1 --env MSG=a=b",
     CellSpec(cpus=2.0, gpus=0.5, memory=4 * 2**30, timeout=60.0, name="sweep-1",
              out=("model", "history"), env=(("OMP_NUM_THREADS", "1"), ("MSG", "a=b")))),
    ("--workers 4 --all-ranks --cpus 0", CellSpec(workers=4, all_ranks=True, cpus=0.0)),
    ("--detach --name nightly", CellSpec(detach=True, name="nightly")),
    ("--no-pull", CellSpec(pull=False)),
    ("--cpus=3 --gpus=1", CellSpec(cpus=3.0, gpus=1.0)),
    ("--env 'GREETING=hello world'", CellSpec(env=(("GREETING", "hello world"),))),
    ("--out ' a , b '", CellSpec(out=("a", "b"))),
    ("--memory 512MB", CellSpec(memory=512 * 10**6)),
    ("--cpus 1 --cpus 2", CellSpec(cpus=2.0)),
])
def test_good_cell_lines(line, expected):
    assert parse_cell_line(line) == expected


@pytest.mark.parametrize("line", ["--help", "-h", "--cpus 2 --help"])
def test_help_gives_none(line):
    assert parse_cell_line(line) is None


@pytest.mark.parametrize("line, fragment", [
    ("--bogus", "unrecognized arguments: --bogus"),
    ("--cpus", "expected one argument"),
    ("--cpus abc", "not a number"),
    ("--cpus nan", "finite"),
    ("--cpus NaN", "finite"),
    ("--gpus inf", "finite"),
    ("--timeout 1e999", "finite"),
    ("--cpus -1", "0 or more"),
    ("--cpus=-0.5", "0 or more"),
    ("--gpus -inf", "expected one argument"),
    ("--cpus 5000", "--cpus"),
    ("--gpus 2000", "--gpus"),
    ("--workers 0", "1 or more"),
    ("--workers 1.5", "whole number"),
    ("--workers -2", "1 or more"),
    ("--workers 2000", "--workers"),
    ("--timeout -5", "0 or more"),
    ("--timeout 999999999", "--timeout"),
    ("--memory 0", "more than zero"),
    ("--memory lots", "not a size"),
    ("--memory", "expected one argument"),
    ("--env NOEQUALS", "KEY=VALUE"),
    ("--env", "expected one argument"),
    ("--env HF_TOKEN=abc123", "secret"),
    ("--name 'bad name'", "--name"),
    ("--name", "expected one argument"),
    ("--out 1x", "Python names"),
    ("--out ,", "Python names"),
    ("--out a --no-pull", "contradict"),
    ("--detach --workers 2", "--detach"),
    ("--cpus 1 stray", "unrecognized arguments: stray"),
    ("--cpu 1", "unrecognized arguments"),        # no abbreviations
    ("--env 'unbalanced", "quotes"),
    ('--name "x', "quotes"),
    ("--detach=yes", "ignored explicit argument"),
])
def test_malformed_cell_lines_are_one_line_usage_errors(line, fragment):
    with pytest.raises(LeptonUsageError) as info:
        parse_cell_line(line)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "abc123" not in message


def test_huge_memory_is_a_usage_error():
    with pytest.raises(LeptonUsageError):
        parse_cell_line("--memory " + "9" * 400)


# -- %lepton subcommands --------------------------------------------------------------------
@pytest.mark.parametrize("line, expected", [
    ("", {"command": "help"}),
    ("--help", {"command": "help"}),
    ("-h", {"command": "help"}),
    ("help", {"command": "help"}),
    ("status", {"command": "status"}),
    ("connect 10.0.0.5:6379", {"command": "connect", "address": "10.0.0.5:6379"}),
    ("connect local", {"command": "connect", "address": "local"}),
    ("disconnect", {"command": "disconnect"}),
    ("jobs", {"command": "jobs", "all": False, "limit": 20, "status": None}),
    ("jobs --all --limit 5 --status running",
     {"command": "jobs", "all": True, "limit": 5, "status": "running"}),
    ("attach sweep-1", {"command": "attach", "job": "sweep-1"}),
    ("logs 0101-abcd", {"command": "logs", "job": "0101-abcd"}),
    ("cancel nightly", {"command": "cancel", "job": "nightly"}),
    ("group", {"command": "group", "action": "info", "workers": None}),
    ("group stop", {"command": "group", "action": "stop", "workers": None}),
    ("group restart", {"command": "group", "action": "restart", "workers": None}),
    ("group resize 4", {"command": "group", "action": "resize", "workers": 4}),
    ("audit --limit 3 --job j1", {"command": "audit", "limit": 3, "job": "j1"}),
    ("stop-cluster", {"command": "stop-cluster"}),
])
def test_good_line_commands(line, expected):
    assert vars(parse_line(line)) == expected


@pytest.mark.parametrize("line", [
    "bogus", "connect", "connect a b", "jobs --limit 0", "jobs --limit x", "jobs --limit",
    "group reboot", "group resize 0", "--cpus 2", "attach", "audit --job", "jobs 'unbalanced", "status extra",
    "stop",
])
def test_malformed_line_commands(line):
    with pytest.raises(LeptonUsageError) as info:
        parse_line(line)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("line", ["connect", "jobs --limit 0", "audit --job"])
def test_hints_in_usage_errors_work(line):
    with pytest.raises(LeptonUsageError) as info:
        parse_line(line)
    hints = re.findall(r"`(%%?lepton[^`]*)`", str(info.value))
    assert hints
    for hint in hints:            # a hint we print must itself be accepted
        if hint.endswith("?"):
            continue              # IPython's own help syntax, always valid
        if hint.startswith("%%"):
            assert parse_cell_line(hint[len("%%lepton"):]) is None
        else:
            parse_line(hint[len("%lepton"):])


@pytest.mark.parametrize("prog, words", [
    ("%%lepton train", ["--workers", "0"]), ("%%lepton tune", ["--samples", "x"]),
    ("%lepton compress", ["--quantize", "int4"]), ("%lepton deploy", ["--bogus"]),
])
def test_every_magic_parser_names_its_own_help(prog, words):
    """One parser class behind all magics: the hint is the command's own -h, which works."""
    from lepton_lab.notebook._models import parser
    from lepton_lab.notebook._train import train_parser, tune_parser

    p = {"%%lepton train": train_parser, "%%lepton tune": tune_parser}.get(
        prog, lambda: parser(prog.split()[1]))()
    with pytest.raises(LeptonUsageError) as info:
        p.parse_args(words)
    message = str(info.value)
    assert message.startswith(f"{prog}: ") and "\n" not in message
    assert message.endswith(f"see `{prog} -h`"), message
    assert p.parse_args(["-h"]).help is True


# -- a real IPython shell (the `ip` fixture is in conftest.py) ------------------------------
def test_docstring_documents_every_flag_with_an_example(ip):
    doc = LeptonMagics.lepton.__doc__
    for flag in CELL_FLAGS:
        assert flag in doc, flag
    assert "Examples" in doc and "%%lepton --gpus 1" in doc
    info = ip.object_inspect("%%lepton")                  # what `%%lepton?` shows
    assert info["found"] and all(flag in info["docstring"] for flag in CELL_FLAGS)
    # and every documented flag is one the parser really takes
    assert parse_cell_line("--cpus 1 --gpus 0 --memory 1GB --timeout 5 --name n --out a "
                           "--env A=1") is not None
    assert parse_cell_line("--workers 2 --all-ranks") is not None
    assert parse_cell_line("--detach --no-pull") is not None


def test_bad_flag_is_a_usage_error_without_traceback(ip, capsys):
    ip.user_ns.pop("x", None)
    result = ip.run_cell("%%lepton --bogus\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert "--bogus" in str(result.error_in_exec)
    shown = "".join(capsys.readouterr())
    assert "UsageError: %%lepton: unrecognized arguments: --bogus" in shown
    assert "Traceback" not in shown
    assert "x" not in ip.user_ns                          # nothing ran, locally or remotely
    assert cluster.current() is None


def test_cell_help_prints_help_and_touches_no_cluster(ip, capsys):
    result = ip.run_cell("%%lepton --help\nx = 1\n")
    assert result.error_in_exec is None and result.success
    out = capsys.readouterr().out
    assert out.startswith("usage: %%lepton")
    assert all(flag in out for flag in CELL_FLAGS)
    assert "examples:" in out
    assert cluster.current() is None


def test_empty_cell_is_refused_before_connecting(ip):
    result = ip.run_cell("%%lepton --cpus 1\n   \n")
    assert isinstance(result.error_in_exec, UsageError)
    assert "empty" in str(result.error_in_exec)


def test_syntax_error_reported_without_touching_the_cluster(ip):
    result = ip.run_cell("%%lepton\na = 1\nb = (\n")
    assert isinstance(result.error_in_exec, CellSyntaxError)
    assert result.error_in_exec.lineno == 3


def test_line_magic_help_and_misuse(ip, capsys):
    assert ip.run_cell("%lepton help").error_in_exec is None
    assert "Line commands" in capsys.readouterr().out
    result = ip.run_cell("%lepton --cpus 2")
    assert isinstance(result.error_in_exec, UsageError)
    assert "%%lepton" in str(result.error_in_exec)
    result = ip.run_cell("%lepton bogus")
    assert isinstance(result.error_in_exec, UsageError)


def test_jobs_and_audit_read_the_store(ip, capsys, monkeypatch):
    from lepton_lab.store import get_store

    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    store = get_store()
    store.create_job("0101-feed0001", kind="cell", name="trainer", cluster="c:1",
                     resources={"cpus": 1.0}, source="x = 1", source_hash="f00dcafe" * 8)
    store.finish_job("0101-feed0001", "failed", error="boom")
    assert ip.run_cell("%lepton jobs").error_in_exec is None
    out = capsys.readouterr().out
    assert "0101-feed0001" in out and "failed" in out and "trainer" in out and "ada" in out
    assert ip.run_cell("%lepton audit --job 0101-feed0001").error_in_exec is None
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "outcome" in lines[0] and "failed" in lines[0]
    assert "submit" in lines[1] and "f00dcafef00d" in lines[1]
    assert cluster.current() is None


def test_unicode_spaces_around_a_line_read_as_ipython_reads_them():
    """IPython strips a magic's line with str.strip() (U+00A0 and U+3000 too); the parser
    agrees, so a line is never a usage error here but a cell in the shell (found by the
    magic-line fuzz test with line='\\xa0')."""
    assert parse_cell_line("\xa0") == CellSpec()
    assert parse_cell_line("\xa0--cpus 2\u3000") == CellSpec(cpus=2.0)
    with pytest.raises(LeptonUsageError):
        parse_cell_line("--cpus\xa02")        # inside the line it is not a separator
