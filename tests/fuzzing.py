"""Property-based requests for every route of the OpenAPI schema (hypothesis; values from the JSON schemas).

Each operation gets values drawn from its own schema (valid-looking requests that reach deep into the
code) mixed with hostile ones (wrong types, huge numbers, odd strings, corrupt and pathological files).
Used by tests/test_fuzz.py (a few hundred requests) and benchmarks/bench_fuzz.py (20,000)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import jsonschema
from hypothesis import strategies as st

from . import hostile

_REF = "#/components/schemas/"


def local_refs(schema: Any, components: dict) -> dict:
    """A self-contained JSON schema: component references rewritten to ``$defs`` inside it."""
    text = json.dumps(schema).replace(_REF, "#/$defs/")
    defs = json.loads(json.dumps(components).replace(_REF, "#/$defs/"))
    return {**json.loads(text), "$defs": defs}


def from_schema(schema: dict, defs: dict | None = None) -> st.SearchStrategy:
    """Values for the JSON-schema subset FastAPI writes (type, anyOf, enum/const, bounds, properties,
    items, $ref), usually valid for the schema; (hypothesis-jsonschema does not work with this hypothesis)."""
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs) for s in schema[key]])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(max_size=40) if schema.get("format") != "binary" else st.binary(max_size=64)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=5)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: from_schema(v, defs) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, defs) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    return _ANY_JSON


def operations(openapi: dict) -> list[tuple[str, str, dict]]:
    """(method, path, operation) for every operation in the schema."""
    return [
        (method.upper(), path, op)
        for path, item in sorted(openapi["paths"].items())
        for method, op in sorted(item.items())
        if method in ("get", "post", "put", "patch", "delete")
    ]


_ODD_TEXT = st.sampled_from(
    ["", "0", "-1", "1e400", str(2**63), str(2**64), "9" * 5000, "NaN", "null", "true", "%00", "\u202e", "../etc"]
)
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_FILES = st.sampled_from(
    [
        b"",
        b"not an image",
        b"\x89PNG\r\n\x1a\n",
        hostile.png_bomb(),
        hostile.truncated_jpeg(),
        hostile.SKETCH.read_bytes(),
        hostile.svg_subpaths(300),
        hostile.svg_elements(11_000),
        hostile.svg_billion_laughs(),
        b"[[[0, 1e400], [0, 1]]]",
        b'{"drawing": [[["a"], ["b"]]]}',
    ]
)


def _param_value(schema: dict, components: dict) -> st.SearchStrategy:
    typed = from_schema(local_refs(schema, components)).map(lambda v: json.dumps(v) if not isinstance(v, str) else v)
    return st.one_of(typed, _ODD_TEXT, st.text(max_size=30))


def request_strategy(method: str, path: str, op: dict, components: dict) -> st.SearchStrategy:
    """A strategy for dicts of httpx request arguments for one operation."""
    path_params, query = {}, {}
    for param in op.get("parameters", []):
        strategy = _param_value(param.get("schema", {}), components)
        if param["in"] == "path":
            path_params[param["name"]] = strategy
        elif param["in"] == "query":
            query[param["name"]] = st.none() | strategy
    bodies = [st.just({})]
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        json_schema = local_refs(content["application/json"]["schema"], components)
        bodies.append(from_schema(json_schema).map(lambda v: {"json": v}))
        bodies.append(_ANY_JSON.map(lambda v: {"json": v}))
        bodies.append(st.sampled_from([s[1] for s in hostile.BAD_STROKES]).map(lambda t: {"content": t, "json_ct": 1}))
    if "multipart/form-data" in content:
        field = next(iter(content["multipart/form-data"]["schema"].get("properties", {"files": None})))
        bodies.append(_FILES.map(lambda data: {"files": [(field, ("f.bin", data, "application/octet-stream"))]}))
    if "image/png" in content:
        bodies.append(_FILES.map(lambda data: {"content": data, "png_ct": 1}))

    @st.composite
    def build(draw):
        url = path
        for name, strategy in path_params.items():
            url = url.replace("{" + name + "}", quote(draw(strategy), safe="") or "0")
        params = {k: v for k, s in query.items() if (v := draw(s)) is not None}
        body = dict(draw(st.one_of(bodies)))
        headers = {}
        if body.pop("json_ct", None):
            headers["content-type"] = "application/json"
        if body.pop("png_ct", None):
            headers["content-type"] = "image/png"
        return {"method": method, "url": url, "params": params, "headers": headers, **body}

    return build()


def check_response(response, op: dict, components: dict) -> None:
    """No 5xx; JSON answers match the schema of their status (errors: ``{"detail", "code"}``)."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if not response.headers.get("content-type", "").startswith("application/json"):
        return
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("detail"), str) and isinstance(body.get("code"), str), body
        return
    declared = op.get("responses", {}).get(str(response.status_code), {})
    schema = declared.get("content", {}).get("application/json", {}).get("schema")
    if schema:
        jsonschema.validate(body, local_refs(schema, components))
