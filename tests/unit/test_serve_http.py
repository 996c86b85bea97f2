"""The endpoint's pure HTTP helpers: routes, size limits, request parsing, responses, and
the batch splitting of the replica (with a real small torch model, no Ray)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lepton_lab.serve._app import (
    NPY,
    EndpointReplica,
    HttpError,
    check_content_length,
    check_route,
    check_shape,
    encode_outputs,
    openapi,
    parse_inputs,
    relative_path,
    sample_shape,
    split_outputs,
)


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def status_of(fn, *args, **kw) -> int:
    with pytest.raises(HttpError) as info:
        fn(*args, **kw)
    assert "\n" not in info.value.message
    return info.value.status


# -- routes --------------------------------------------------------------------------------------
def test_relative_path_strips_the_prefix_and_trailing_slash():
    assert relative_path("/digits-api/predict", "/digits-api") == "/predict"
    assert relative_path("/digits-api/predict/", "/digits-api") == "/predict"
    assert relative_path("/predict", "") == "/predict"
    assert relative_path("/digits-api", "/digits-api") == ""


def test_routes_methods_and_allow_header():
    check_route("/predict", "POST")
    check_route("/healthz", "GET")
    check_route("/healthz", "HEAD")
    check_route("/openapi.json", "GET")
    assert status_of(check_route, "/nope", "GET") == 404
    for method in ("GET", "PUT", "DELETE"):
        with pytest.raises(HttpError) as info:
            check_route("/predict", method)
        assert info.value.status == 405 and info.value.headers == {"Allow": "POST"}
    assert status_of(check_route, "/healthz", "POST") == 405


# -- size limits ---------------------------------------------------------------------------------
def test_content_length_over_the_limit_is_413_before_reading():
    assert check_content_length(None, 100) is None
    assert check_content_length("100", 100) == 100
    assert status_of(check_content_length, "101", 100) == 413
    assert status_of(check_content_length, str(17 * 2**20), 16 * 2**20) == 413
    assert status_of(check_content_length, "abc", 100) == 400
    assert status_of(check_content_length, "-5", 100) == 400


def test_replica_reads_at_most_the_limit_even_without_content_length():
    import asyncio

    rep = EndpointReplica.__new__(EndpointReplica)
    rep._max_bytes = 10

    class Req:
        def __init__(self, chunks):
            self.chunks = chunks

        async def stream(self):
            for c in self.chunks:
                yield c

    assert asyncio.run(rep._read_body(Req([b"12345", b"67890"]))) == b"1234567890"
    with pytest.raises(HttpError) as info:
        asyncio.run(rep._read_body(Req([b"12345", b"67890", b"1"])))
    assert info.value.status == 413 and "limit" in info.value.message


# -- parsing -------------------------------------------------------------------------------------
def test_json_and_npy_inputs_parse_to_the_model_dtype():
    rows = [[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]]
    a = parse_inputs(json.dumps({"inputs": rows}).encode(), "application/json; charset=utf-8")
    assert a.dtype == np.float32 and a.shape == (2, 3) and a.tolist() == rows
    b = parse_inputs(npy(np.array(rows, dtype=np.float64)), NPY)
    assert b.dtype == np.float32 and np.array_equal(a, b)
    c = parse_inputs(npy(np.arange(6).reshape(2, 3)), NPY, np.int64)
    assert c.dtype == np.int64
    assert parse_inputs(npy(np.ones((1, 2), np.float32)), None).shape == (1, 2)  # sniffed
    assert parse_inputs(b'{"inputs": [[1, 2]]}', None).shape == (1, 2)
    assert parse_inputs(npy(np.array([[True, False]])), NPY).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("body,ctype,status", [
    (b"{not json", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b'[[1, 2]]', "application/json", 400),                       # no "inputs"
    (b'{"input": [[1, 2]]}', "application/json", 400),
    (b'{"inputs": 3}', "application/json", 400),
    (b'{"inputs": [[1, 2], [3]]}', "application/json", 400),      # ragged
    (b'{"inputs": [["a", "b"]]}', "application/json", 400),
    (b'{"inputs": [[1, null]]}', "application/json", 400),
    (b'{"inputs": []}', "application/json", 400),                 # empty batch
    (b"not npy at all", NPY, 400),
    (b"\x93NUMPY\x01\x00garbage", NPY, 400),
    (b"a,b\n1,2", "text/csv", 415),
    (b"[" * 10_000 + b"]" * 10_000, "application/json", 400),     # too deep for json
    (b'{"inputs": ' + b"[" * 5_000 + b"1" + b"]" * 5_000 + b"}", "application/json", 400),
])
def test_malformed_bodies_are_400_or_415_with_a_message(body, ctype, status):
    assert status_of(parse_inputs, body, ctype) == status


def test_npy_that_needs_pickle_or_is_not_numeric_or_scalar_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    obj = buf.getvalue()
    assert status_of(parse_inputs, obj, NPY) == 400
    assert status_of(parse_inputs, npy(np.array(["a", "b"])), NPY) == 400
    assert status_of(parse_inputs, npy(np.array([1 + 2j])), NPY) == 400
    assert status_of(parse_inputs, npy(np.float32(3.0)), NPY) == 400
    assert status_of(parse_inputs, npy(np.zeros((0, 4), np.float32)), NPY) == 400
    buf = io.BytesIO()
    np.savez(buf, a=np.ones(2))
    assert status_of(parse_inputs, buf.getvalue(), NPY) == 400


def test_shape_checks_against_the_recorded_example_shape():
    # the registry records the per-row shape (lepton_lab.registry.register_module)
    assert sample_shape([64]) == (64,)
    assert sample_shape((3, 32, 32)) == (3, 32, 32)
    assert sample_shape([]) is None and sample_shape(None) is None
    assert sample_shape([None, 64]) is None and sample_shape(["h", 8]) is None
    assert sample_shape([-1]) is None and sample_shape([True]) is None
    check_shape(np.zeros((5, 64)), (64,))
    check_shape(np.zeros((5, 3)), None)
    with pytest.raises(HttpError) as info:
        check_shape(np.zeros((2, 3)), (64,))
    assert info.value.status == 400
    assert "shape (2, 3)" in info.value.message and "(n, 64)" in info.value.message


# -- responses -----------------------------------------------------------------------------------
def test_outputs_encode_as_json_or_npy_by_accept():
    out = np.array([[1.5, -2.0]], dtype=np.float32)
    body, media = encode_outputs(out, "application/json")
    assert media == "application/json" and json.loads(body) == {"outputs": [[1.5, -2.0]]}
    assert encode_outputs(out, None)[1] == "application/json"
    body, media = encode_outputs(out, f"{NPY}, */*")
    assert media == NPY
    back = np.load(io.BytesIO(body))
    assert back.dtype == np.float32 and np.array_equal(back, out)


def test_split_outputs_by_rows_and_rejects_non_batch_outputs():
    parts = split_outputs(np.arange(12).reshape(6, 2), [1, 3, 2])
    assert [p.shape for p in parts] == [(1, 2), (3, 2), (2, 2)]
    assert parts[1].tolist() == [[2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="not the batch"):
        split_outputs(np.zeros((5, 2)), [1, 3, 2])
    with pytest.raises(ValueError):
        split_outputs(np.float32(1.0), [1])


def test_openapi_document_describes_predict_and_auth():
    doc = openapi("digits-api", "digits:2", (64,), True, 16 * 2**20)
    json.dumps(doc)
    post = doc["paths"]["/predict"]["post"]
    assert doc["servers"] == [{"url": "/digits-api"}] and doc["info"]["version"] == "digits:2"
    assert set(post["requestBody"]["content"]) == {"application/json", NPY}
    assert "401" in post["responses"] and post["security"] == [{"bearer": []}]
    row = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert row["items"]["minItems"] == 64
    assert "security" not in openapi("a", "m:1", None, False, 10)["paths"]["/predict"]["post"]


# -- batching inside the replica (real torch model, no Ray) ---------------------------------------
def test_batched_inference_equals_one_by_one(replica):
    import torch

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 3, 2, 5)]
    outs = replica._infer(arrays)
    for a, o in zip(arrays, outs):
        with torch.no_grad():
            ref = replica._model(torch.from_numpy(a)).numpy()
        assert o.shape == (a.shape[0], 3)
        np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-6)


def test_a_bad_request_in_a_batch_fails_alone(replica):
    good = np.ones((2, 4), np.float32)
    bad = np.ones((2, 5), np.float32)        # wrong width: the model raises
    outs = replica._infer([good, bad, good])
    assert outs[0].shape == (2, 3) and outs[2].shape == (2, 3)
    assert isinstance(outs[1], HttpError) and outs[1].status == 400
    assert "model refused the input" in outs[1].message
