"""CellSpec validation, sizes and env parsing (lepton_lab/remote/_spec.py)."""

from __future__ import annotations

import math

import pytest

from lepton_lab.errors import LeptonUsageError
from lepton_lab.remote._spec import CellSpec, looks_secret, parse_env, parse_size


# -- parse_size -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("1000", 1000),
    ("1b", 1),
    ("1B", 1),
    ("2k", 2 * 10**3),
    ("2kb", 2 * 10**3),
    ("4GB", 4 * 10**9),
    ("4g", 4 * 10**9),
    ("1t", 10**12),
    ("512MiB", 512 * 2**20),
    ("512mi", 512 * 2**20),
    ("1KiB", 1024),
    ("2GiB", 2 * 2**30),
    ("1TiB", 2**40),
    ("1.5g", 1_500_000_000),
    ("0.5GiB", 2**29),
    (" 3 MB ", 3 * 10**6),
    (7, 7),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", "abc", "-1GB", "1 2", "1e9", "GB", "1XB", "1.2.3g", "1gibb", "nan", "inf", "1,000",
])
def test_parse_size_rejects_non_sizes(text):
    with pytest.raises(LeptonUsageError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0GB", "0.0000001k", "0.4"])
def test_parse_size_rejects_zero(text):
    with pytest.raises(LeptonUsageError, match="more than zero"):
        parse_size(text)


def test_parse_size_huge_number_is_a_usage_error():
    with pytest.raises(LeptonUsageError):
        parse_size("9" * 400)


# -- parse_env --------------------------------------------------------------------------------
def test_parse_env_pairs_in_order():
    assert parse_env(["A=1", "B_2=x=y", "EMPTY="]) == (("A", "1"), ("B_2", "x=y"), ("EMPTY", ""))


@pytest.mark.parametrize("item", ["NOEQUALS", "=value", "1ABC=x", "A-B=1", "A B=1", ""])
def test_parse_env_rejects_malformed(item):
    with pytest.raises(LeptonUsageError, match="KEY=VALUE"):
        parse_env([item])


@pytest.mark.parametrize("name", ["API_KEY", "HF_TOKEN", "db_password", "AWS_SECRET_ACCESS",
                                  "MY_PASSWD", "GCP_CREDENTIALS", "token"])
def test_parse_env_refuses_secret_names_without_echoing_the_value(name):
    with pytest.raises(LeptonUsageError, match="secret") as info:
        parse_env([f"{name}=hunter2-value"])
    assert "hunter2-value" not in str(info.value)
    assert looks_secret(name)


def test_looks_secret_lets_ordinary_names_through():
    for name in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED", "NCCL_DEBUG"):
        assert not looks_secret(name)


# -- CellSpec validation ----------------------------------------------------------------------
def test_default_spec():
    spec = CellSpec()
    assert spec.cpus_per_task == 1.0
    assert spec.gpus == 0.0 and spec.workers is None and spec.pull and not spec.detach


@pytest.mark.parametrize("kwargs, flag", [
    ({"cpus": -1}, "--cpus"),
    ({"cpus": 4097}, "--cpus"),
    ({"cpus": math.nan}, "--cpus"),
    ({"gpus": -0.5}, "--gpus"),
    ({"gpus": 2000}, "--gpus"),
    ({"gpus": math.nan}, "--gpus"),
    ({"workers": 0}, "--workers"),
    ({"workers": 1025}, "--workers"),
    ({"timeout": 0}, "--timeout"),
    ({"timeout": -3}, "--timeout"),
    ({"timeout": 8 * 86400}, "--timeout"),
    ({"timeout": math.nan}, "--timeout"),
    ({"name": ""}, "--name"),
    ({"name": "has space"}, "--name"),
    ({"name": "-leading-dash"}, "--name"),
    ({"name": "x" * 65}, "--name"),
    ({"name": "semi;colon"}, "--name"),
    ({"out": ("ok", "not ok")}, "--out"),
    ({"out": ("1abc",)}, "--out"),
    ({"env": (("HF_TOKEN", "abc"),)}, "--env"),
])
def test_spec_rejects_bad_values_naming_the_flag(kwargs, flag):
    with pytest.raises(LeptonUsageError) as info:
        CellSpec(**kwargs)
    message = str(info.value)
    assert message.startswith(flag), message
    assert "\n" not in message


@pytest.mark.parametrize("kwargs", [
    {"cpus": 0}, {"cpus": 4096}, {"cpus": 0.5}, {"gpus": 0.25}, {"gpus": 1024},
    {"workers": 1}, {"workers": 1024}, {"timeout": 0.1}, {"timeout": 7 * 86400},
    {"name": "a"}, {"name": "Sweep-1.v2_final"}, {"name": "x" * 64},
    {"out": ("model", "history")}, {"env": (("OMP_NUM_THREADS", "1"),)},
])
def test_spec_accepts_boundaries(kwargs):
    spec = CellSpec(**kwargs)
    for key, value in kwargs.items():
        assert getattr(spec, key) == value


def test_detach_with_workers_is_refused():
    with pytest.raises(LeptonUsageError, match="--detach") as info:
        CellSpec(detach=True, workers=2)
    assert "--workers" in str(info.value)
    CellSpec(detach=True)          # each alone is fine
    CellSpec(workers=2)


def test_spec_is_frozen():
    spec = CellSpec()
    with pytest.raises(AttributeError):
        spec.cpus = 3  # type: ignore[misc]


# -- resources / ray_options ------------------------------------------------------------------
def test_resources_never_contain_env_values():
    spec = CellSpec(cpus=2, gpus=1, memory=4 * 2**30, workers=3, timeout=60,
                    env=(("OMP_NUM_THREADS", "v4lue-one"), ("MY_FLAG", "v4lue-two")))
    res = spec.resources()
    assert res == {"cpus": 2, "gpus": 1, "memory": 4 * 2**30, "workers": 3, "timeout": 60,
                   "env_keys": ["OMP_NUM_THREADS", "MY_FLAG"]}
    assert "v4lue" not in repr(res)


def test_resources_minimal():
    assert CellSpec().resources() == {"cpus": 1.0, "gpus": 0.0}


def test_ray_options():
    assert CellSpec().ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert CellSpec(cpus=0, gpus=0.5, memory=512 * 2**20).ray_options() == {
        "num_cpus": 0, "num_gpus": 0.5, "memory": 512 * 2**20}
    # env and the rest are not scheduling options
    assert set(CellSpec(env=(("A", "1"),), timeout=5, workers=2).ray_options()) == {
        "num_cpus", "num_gpus"}
