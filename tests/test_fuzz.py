"""Fuzz every route of the OpenAPI schema: no 5xx and no answer that breaks the schema (issue #12).

``SKETCHFIND_FUZZ_EXAMPLES`` requests per operation (default 150: 1,200 in all, well under a minute);
benchmarks/bench_fuzz.py runs 20,000."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from sketchfind.search import Searcher
from sketchfind.service import Settings, create_app

from .fuzzing import check_response, operations, request_strategy
from .index_helpers import copy_photos, tiny

EXAMPLES = int(os.environ.get("SKETCHFIND_FUZZ_EXAMPLES", "150"))
TOKEN = "fuzz"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from sketchfind.index import build_index

    root = tmp_path_factory.mktemp("fuzz")
    model = tiny()
    copy_photos(root / "photos", classes=("cup", "swan"), per_class=4)
    build_index([root / "photos"], root / "idx", model, label_from_folder=True)
    app = create_app(
        Settings(index=root / "idx", token=TOKEN, upload_dir=root / "uploads"),
        searcher_factory=lambda s: Searcher.open(s.index, model=model),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(client):
    return client.get("/openapi.json").json()


def _operation_ids():
    from sketchfind.service.main import create_app as make

    app = make(Settings(), searcher_factory=lambda s: None)
    return [f"{m} {p}" for m, p, _ in operations(app.openapi())]


@pytest.mark.parametrize("operation", _operation_ids())
def test_fuzz_operation(client, openapi, operation):
    method, path = operation.split(" ", 1)
    op = openapi["paths"][path][method.lower()]
    components = openapi.get("components", {}).get("schemas", {})
    strategy = request_strategy(method, path, op, components)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(strategy)
    def run(request):
        headers = dict(request.pop("headers"))
        if method != "GET" and "/photos" in path:
            headers["Authorization"] = f"Bearer {TOKEN}"
        response = client.request(**request, headers=headers)
        check_response(response, op, components)

    run()
