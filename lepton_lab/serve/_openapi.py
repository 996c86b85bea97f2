"""The OpenAPI 3.1 description an endpoint serves at ``GET /NAME/openapi.json``."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
NPY = "application/x-npy"


def openapi(name: str, model_ref: str, shape: tuple[int, ...] | None, auth: bool,
            max_bytes: int) -> dict[str, Any]:
    """A hand-written OpenAPI 3.1 description of an endpoint (served as is)."""
    row: dict[str, Any] = {"type": "number"}
    for d in reversed(shape or ()):
        row = {"type": "array", "items": row, "minItems": d, "maxItems": d}
    if shape is None:
        row = {"description": "one input row (any nesting of numbers the model accepts)"}
    err = {"description": "error", "content": {JSON: {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}
    predict: dict[str, Any] = {
        "summary": f"Run {model_ref} on a batch of rows",
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"type": "object", "required": ["inputs"],
                              "properties": {"inputs": {"type": "array", "items": row,
                                                        "minItems": 1}}}},
            NPY: {"schema": {"type": "string", "format": "binary",
                             "description": "numpy.save bytes; first axis is the batch"}}}},
        "responses": {
            "200": {"description": "the model's outputs, one per input row", "content": {
                JSON: {"schema": {"type": "object", "properties": {"outputs": {
                    "type": "array"}}}},
                NPY: {"schema": {"type": "string", "format": "binary"}}}},
            "400": err, "405": err, "413": dict(err, description=f"body over {max_bytes} bytes"),
            "415": err, "503": err},
    }
    if auth:
        predict["security"] = [{"bearer": []}]
        predict["responses"]["401"] = err
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Lepton endpoint {name}", "version": model_ref},
        "servers": [{"url": f"/{name}"}],
        "paths": {
            "/predict": {"post": predict},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {
                "description": "the replica is up", "content": {JSON: {"schema": {
                    "type": "object", "properties": {"status": {"type": "string"}}}}}}}}},
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
