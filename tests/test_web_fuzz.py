"""Fuzz the web API from its own OpenAPI schema (Schemathesis): whatever a client sends, the answer is never
a 500 or a traceback, and JSON answers match the schema. Bounded: a few examples per endpoint, derandomized,
on a live server over the tiny model with a short time limit (slow requests answer 504, as documented)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_schema_conformance, status_code_conformance)

from _web_helpers import LiveServer, web_sae, write_results_folder  # noqa: E402
from saesteer.web.app import openapi_schema  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_schema())


@pytest.fixture(scope="module")
def fuzz_server(tiny_loaded, tmp_path_factory):
    from saesteer.steerer import Steerer
    from saesteer.web.app import create_app

    folder = write_results_folder(tmp_path_factory.mktemp("fuzz") / "sweep")
    app = create_app(Steerer(tiny_loaded, web_sae()), [folder], queue_size=4, request_timeout=0.5)
    with LiveServer(app) as srv:
        yield srv


@schema.parametrize()
@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_answers_every_request_without_a_server_error(case, fuzz_server):
    response = case.call(base_url=fuzz_server.url, timeout=30)
    assert "Traceback" not in response.text
    # 503 (queue full) and 504 (time limit) are answers the API documents; any other 5xx is a fault
    assert response.status_code < 500 or response.status_code in (503, 504), response.text
    case.validate_response(response, checks=[response_schema_conformance, status_code_conformance,
                                             content_type_conformance])
