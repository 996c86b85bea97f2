"""Fuzzing an endpoint's request parsing with hypothesis: JSON of any shape, ``.npy`` files of
any dtype and shape, truncated, with headers that claim huge arrays, pickled objects. The
answer is an array the model can take (finite, the model's type, a batch axis) or an HTTP
400/413/415 with one line; never another exception, and never an unpickled object.

``LEPTON_FUZZ_EXAMPLES`` scales the example count (bench/reliability.py runs more)."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_lab.serve._app import NPY, HttpError, check_shape, parse_inputs
from tests._reliability import record

EXAMPLES = 5 * int(os.environ.get("LEPTON_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(-2**70, 2**70), st.booleans())
cells = st.one_of(numbers, st.none(), st.text(max_size=4), st.lists(numbers, max_size=2),
                  st.dictionaries(st.text(max_size=2), numbers, max_size=1))
json_docs = st.one_of(
    st.builds(lambda rows: {"inputs": rows},
              st.lists(st.lists(cells, min_size=0, max_size=5), min_size=0, max_size=4)),
    st.builds(lambda rows: {"inputs": rows}, st.lists(numbers, max_size=5)),
    st.builds(lambda v: {"inputs": v}, cells),
    st.recursive(st.none() | numbers | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8),
)
DTYPES = ["<f2", "<f4", ">f4", "<f8", "<i1", "<i2", "<i4", "<i8", "<u1", "<u8", "|b1",
          "<c8", "<U3", "|S2", "<M8[s]", "<m8[s]", "V4"]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@st.composite
def npy_bodies(draw) -> bytes:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize,
                         max_size=int(np.prod(shape)) * dtype.itemsize))
    body = _npy(np.frombuffer(raw, dtype=dtype).reshape(shape) if raw or not shape
                else np.zeros(shape, dtype))
    how = draw(st.sampled_from(["as is", "truncated", "huge shape", "extra bytes",
                                "bad header", "fortran"]))
    if how == "truncated":
        body = body[:draw(st.integers(0, max(0, len(body) - 1)))]
    elif how == "huge shape" and shape:
        old = repr(shape).encode()
        huge = repr((10**12,) + shape[1:]).encode()
        body = body.replace(old, huge, 1)
    elif how == "extra bytes":
        body += draw(st.binary(min_size=1, max_size=64))
    elif how == "bad header":
        body = body.replace(b"'descr'", draw(st.sampled_from([b"'desc'", b"'descr'x", b"{"])), 1)
    elif how == "fortran":
        body = body.replace(b"False", b"True", 1)
    return body


def pickled_bodies():
    payload = pickle.dumps([{"rm": "-rf"}])
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return st.sampled_from([buf.getvalue(), payload, b"\x93NUMPY" + payload])


def _check(body: bytes, ctype: str | None) -> str:
    try:
        arr = parse_inputs(body, ctype)
    except HttpError as err:
        assert err.status in (400, 413, 415), err.status
        assert err.message and "\n" not in err.message
        return f"http {err.status}"
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    assert arr.ndim >= 1 and arr.shape[0] > 0 and np.isfinite(arr).all()
    try:
        check_shape(arr, (4,))
    except HttpError as err:
        assert err.status == 400 and "\n" not in err.message
    return "ok"


COUNT = {"n": 0}


@FUZZ
@given(doc=json_docs, ctype=st.sampled_from(["application/json", None, "text/plain"]))
def test_fuzzed_json_bodies(doc, ctype):
    COUNT["n"] += 1
    _check(json.dumps(doc, allow_nan=True).encode(), ctype)


@FUZZ
@given(body=st.one_of(npy_bodies(), pickled_bodies(), st.binary(max_size=300)),
       ctype=st.sampled_from([NPY, "application/octet-stream", None]))
def test_fuzzed_npy_bodies(body, ctype):
    COUNT["n"] += 1
    _check(body, ctype)


def test_a_small_body_that_claims_a_huge_array_is_refused_before_allocation():
    body = _npy(np.ones((2, 4), np.float32)).replace(b"(2, 4)", b"(1000000000000, 4)", 1)
    try:
        parse_inputs(body, NPY)
    except HttpError as err:
        assert err.status == 400 and "header says shape (1000000000000, 4)" in err.message
    else:
        raise AssertionError("accepted")


def test_non_finite_or_overflowing_inputs_are_400():
    for arr in (np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]]), np.array([[1e300]])):
        try:
            parse_inputs(_npy(arr), NPY)
        except HttpError as err:
            assert err.status == 400 and "NaN or infinite" in err.message
        else:
            raise AssertionError(arr)
    try:
        parse_inputs(b'{"inputs": [[Infinity, 1]]}', "application/json")
    except HttpError as err:
        assert err.status == 400
    else:
        raise AssertionError("Infinity accepted")


def test_zz_record_the_count():
    record("endpoint_body_fuzz", tried=COUNT["n"], survived=COUNT["n"])
