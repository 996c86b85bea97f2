"""Fuzzing the magic lines: every input either parses or is one LeptonUsageError.

Never another exception type: anything else would reach the user as a raw Python traceback.
Values are at most a few dozen characters, so the known `--memory <400 digits>` overflow is
left to its own explicit tests (test_spec.py, test_magics.py).
"""

from __future__ import annotations

import math
import os
import shlex

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from lepton_lab import cluster
from lepton_lab.errors import LeptonUsageError
from lepton_lab.notebook.magics import parse_cell_line, parse_line
from lepton_lab.remote._spec import CellSpec, parse_size

#: 300 examples by default; bench/reliability.py scales them with LEPTON_FUZZ_EXAMPLES
EXAMPLES = int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "40")) * 15 // 2
COUNT = {"n": 0}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

#: characters str.splitlines() breaks on: a magic line never contains them
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

CELL_FLAGS = ["--cpus", "--gpus", "--memory", "--workers", "--timeout", "--name", "--detach",
              "--out", "--no-pull", "--env", "--all-ranks", "--help", "-h"]
NOT_FLAGS = ["--bogus", "--cpu", "-c", "--", "-", "--gpus=", "---cpus", "--CPUS"]

numbers = st.one_of(
    st.integers(-10**6, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "+inf", "1e999", "-1e999", "-0", "0x10",
                     "1_000", "", " ", "1.5.5", "\u0663", "1e-400", "4097", "1025", "0.0"]),
)
sizes = st.builds(lambda n, unit: f"{n}{unit}",
                  st.one_of(st.integers(-5, 10**9), st.floats(0, 1e6).map(lambda f: f"{f:g}")),
                  st.sampled_from(["", "b", "k", "kb", "KiB", "M", "mi", "GiB", "T", "tb", "xb",
                                   "gibb", " g", "e3"]))
envs = st.builds(lambda k, v: f"{k}={v}",
                 st.sampled_from(["A", "OMP_NUM_THREADS", "HF_TOKEN", "api_key", "1X", "", "a b",
                                  "_x", "X-Y"]),
                 st.text(max_size=10))
names = st.one_of(st.text(max_size=70), st.sampled_from(["a,b", ",", "1x", "class", "x,,y",
                                                         "sweep-1", "-x", "a" * 65]))
values = st.one_of(numbers, sizes, envs, names)
words = st.one_of(st.sampled_from(CELL_FLAGS + NOT_FLAGS), values,
                  st.builds(lambda f, v: f"{f}={v}", st.sampled_from(CELL_FLAGS), values))


@st.composite
def joined(draw, word_strategy) -> str:
    parts = draw(st.lists(word_strategy, max_size=8))
    if draw(st.booleans()):
        return " ".join(shlex.quote(p) for p in parts)
    return " ".join(parts)              # raw: stray quotes stay unbalanced


#: plausible values per flag, so that combinations of valid flags get exercised too
PLAUSIBLE = {
    "--cpus": st.sampled_from(["0", "1", "2", "0.5", "4096", "4097"]),
    "--gpus": st.sampled_from(["0", "1", "0.25", "8", "1024", "1025"]),
    "--memory": st.sampled_from(["1", "512MiB", "4GB", "2g", "1.5GiB", "0"]),
    "--workers": st.sampled_from(["1", "2", "4", "1024", "1025"]),
    "--timeout": st.sampled_from(["0", "0.5", "60", "604800", "604801"]),
    "--name": st.sampled_from(["sweep-1", "a", "n.v2_x", "x" * 64, "x" * 65]),
    "--out": st.sampled_from(["a", "a,b", "model, history", "x,,y"]),
    "--env": st.sampled_from(["A=1", "OMP_NUM_THREADS=4", "MSG=a=b", "EMPTY=", "HF_TOKEN=x"]),
}
SWITCHES = ["--detach", "--no-pull", "--all-ranks", "--help", "-h"]


@st.composite
def flag_combos(draw) -> str:
    clean = draw(st.booleans())          # half the lines use only plausible values
    parts = []
    for flag in draw(st.lists(st.sampled_from(list(PLAUSIBLE) + SWITCHES), max_size=6)):
        if flag in SWITCHES:
            parts.append(flag if clean or draw(st.integers(0, 9)) else f"{flag}={draw(values)}")
            continue
        if clean:
            parts += [flag, shlex.quote(draw(PLAUSIBLE[flag]))]
            continue
        value = draw(st.one_of(PLAUSIBLE[flag], values))
        form = draw(st.sampled_from(["split", "equals", "missing"]))
        if form == "missing":
            parts.append(flag)
        elif form == "equals":
            parts.append(shlex.quote(f"{flag}={value}"))
        else:
            parts += [flag, shlex.quote(value)]
    return " ".join(parts)


cell_lines = st.one_of(st.text(max_size=60), joined(words), flag_combos(), flag_combos())

SUBCOMMANDS = ["status", "connect", "disconnect", "jobs", "attach", "logs", "cancel", "group",
               "audit", "stop-cluster", "help", "info", "stop", "--all", "--limit", "--status",
               "--job", "-h", "--help", "local", "ray://h:1"]
line_words = st.one_of(st.sampled_from(SUBCOMMANDS), values)
line_lines = st.one_of(st.text(max_size=60), joined(line_words))


def one_line(text: str) -> bool:
    return not any(c in text for c in LINE_BREAKS)


def check_cell_line(line: str) -> CellSpec | None:
    try:
        spec = parse_cell_line(line)
    except LeptonUsageError as exc:
        message = str(exc)
        assert message
        if one_line(line):
            assert "\n" not in message, message
        return None
    if spec is not None:
        # a spec that parsed is usable and sane
        assert isinstance(spec, CellSpec)
        assert math.isfinite(spec.cpus_per_task) and 0 <= spec.cpus_per_task <= 4096
        assert math.isfinite(spec.gpus) and 0 <= spec.gpus <= 1024
        assert spec.memory is None or spec.memory > 0
        assert spec.timeout is None or 0 < spec.timeout <= 7 * 86400
        res = spec.resources()
        # env values never reach the record: only numbers and the list of env keys
        assert res.pop("env_keys", []) == [key for key, _ in spec.env]
        assert all(isinstance(v, (int, float)) for v in res.values()), res
        assert all(isinstance(v, (int, float)) for v in spec.ray_options().values())
    return spec


@FUZZ
@given(cell_lines)
def test_cell_line_parses_or_is_a_usage_error(line):
    COUNT["n"] += 1
    check_cell_line(line)


@st.composite
def plausible_pairs(draw) -> list[tuple[str, str | None]]:
    flags = draw(st.lists(st.sampled_from(list(PLAUSIBLE) + SWITCHES[:3]), max_size=5))
    return [(f, None if f in SWITCHES else draw(PLAUSIBLE[f])) for f in flags]


@settings(max_examples=200, deadline=None, database=None)
@given(plausible_pairs())
def test_plausible_flag_combinations_mean_what_they_say(pairs):
    line = " ".join(f if v is None else f"{f} {shlex.quote(v)}" for f, v in pairs)
    given_flags = {f for f, _ in pairs}
    try:
        spec = parse_cell_line(line)
    except LeptonUsageError as exc:
        # the message points at (at least) one of the flags that was given
        assert any(f in str(exc) for f in given_flags), (line, str(exc))
        return
    last = dict(pairs)
    assert spec.cpus == (float(last["--cpus"]) if "--cpus" in last else None)
    assert spec.gpus == float(last.get("--gpus", 0))
    assert spec.workers == (int(last["--workers"]) if "--workers" in last else None)
    assert spec.name == last.get("--name")
    assert spec.memory == (parse_size(last["--memory"]) if "--memory" in last else None)
    assert spec.timeout == (float(last["--timeout"]) or None if "--timeout" in last else None)
    if "--out" in last:
        assert spec.out == tuple(n.strip() for n in last["--out"].split(",") if n.strip())
    assert spec.env == tuple(tuple(v.split("=", 1)) for f, v in pairs if f == "--env")
    assert spec.detach == ("--detach" in given_flags)
    assert spec.pull == ("--no-pull" not in given_flags)
    assert spec.all_ranks == ("--all-ranks" in given_flags)


@FUZZ
@given(line_lines)
def test_line_command_parses_or_is_a_usage_error(line):
    COUNT["n"] += 1
    try:
        args = parse_line(line)
    except LeptonUsageError as exc:
        assert str(exc)
        if one_line(line):
            assert "\n" not in str(exc)
        return
    assert args.command in {"status", "connect", "disconnect", "jobs", "attach", "logs",
                            "cancel", "group", "audit", "stop-cluster", "help"}



# IPython expands $name and {expr} in magic lines before the magic sees them: keep them out,
# so that the line the shell hands over is the line checked here.
shell_lines = cell_lines.filter(lambda s: one_line(s) and not set(s) & set("${}"))


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(line=shell_lines)
def test_bad_lines_in_a_real_shell_are_usage_errors(ip, line):
    try:
        parse_cell_line(line)
    except LeptonUsageError:
        pass
    else:
        assume(False)               # parses: running it would go to the cluster
    ip.user_ns.pop("fuzz_marker", None)
    result = ip.run_cell("%%lepton " + line + "\nfuzz_marker = 1\n")
    assert isinstance(result.error_in_exec, UsageError), repr(result.error_in_exec)
    assert "fuzz_marker" not in ip.user_ns
    assert cluster.current() is None


def test_zz_record_the_count():
    from tests._reliability import record

    record("magic_line_fuzz", tried=COUNT["n"], survived=COUNT["n"])
