"""The web app: a page (playground, sweep browser, feature pages) and the JSON API behind it.

``create_app(steerer, results_dirs, queue_size=..., request_timeout=...)`` returns a FastAPI app made of:

* ``routes_page``: ``GET /``, the page (``static/index.html``, ``app.js`` and the shared stylesheet).
* ``routes_steering``: ``POST /api/generate`` (unsteered and steered continuations, streamed on request) and
  ``POST /api/compare`` (a strength curve).
* ``routes_browse``: ``GET /api/info``, ``GET /api/feature/{feature}``, ``GET /api/search``.
* ``GET /openapi.json``: the schema (exported to ``docs/openapi.json``).

All model work goes through one :class:`~saesteer.web.worker.ModelWorker` (``jobs``): one job at a time, a
bounded queue (503 with ``Retry-After`` when full), a time limit per request (504), work cancelled when its
client goes away. Requests name results folders by number; no path is ever read from a request. Only
``Host`` headers naming this machine (or names allowed explicitly) are accepted, which keeps other web sites
from reaching the API through DNS rebinding.

``python -m saesteer.web.app`` prints the OpenAPI schema.
"""

from __future__ import annotations

import contextlib
import json
from typing import Sequence

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.trustedhost import TrustedHostMiddleware

from saesteer import __version__
from saesteer.web import errors, routes_browse, routes_page, routes_steering
from saesteer.web import schemas as S
from saesteer.web.middleware import BodyLimit, SecurityHeaders
from saesteer.web.playground import Playground
from saesteer.web.results_index import ResultsIndex
from saesteer.web.service import Service
from saesteer.web.worker import ModelWorker

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DESCRIPTION = """Steer a language model through SAE features, and browse sweeps over them.

Field names follow the CLI's options. Errors: 422 (bad field, with a message; includes unknown features,
non-finite values, prompts or token counts over the limits), 503 with `Retry-After` (the model queue is
full), 504 (the request passed its time limit), 413 (body over 64 KiB), 400 (a `Host` that is not this
machine)."""


def create_app(steerer, results_dirs: Sequence = (), *, queue_size: int = 8, request_timeout: float = 120.0,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The web app over ``steerer`` (a :class:`~saesteer.steerer.Steerer` with an SAE, or a list of them on one
    model: several SAEs served together) and the sweep results folders ``results_dirs`` (paths, or a ready
    :class:`ResultsIndex`).

    ``queue_size``: requests that may wait for the model (more get 503). ``request_timeout``: seconds a
    request may take, waiting included (then 504). ``allowed_hosts``: accepted ``Host`` names (default: this
    machine's loopback names; ``["*"]`` accepts any). ``steerer=None`` builds the app for its OpenAPI schema
    only.
    """
    results = results_dirs if isinstance(results_dirs, ResultsIndex) else ResultsIndex(results_dirs)
    steerers = [] if steerer is None else list(steerer) if isinstance(steerer, (list, tuple)) else [steerer]
    if len({id(st.lm) for st in steerers}) > 1:
        raise ValueError("the served SAEs must share one model (one LoadedModel)")
    services = [Service(st, results) for st in steerers]
    worker = ModelWorker(queue_size, request_timeout) if steerers else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if worker is not None:
            worker.close()

    app = FastAPI(title="saesteer", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, separate_input_output_schemas=False)
    app.state.services, app.state.worker, app.state.results = services, worker, results
    app.state.service = services[0] if services else None
    app.state.playground = Playground(steerers) if steerers else None
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOCAL_HOSTS))
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    errors.install(app)
    for module in (routes_page, routes_browse, routes_steering):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the streamed ``StreamEvent`` (referenced from the NDJSON response)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                         separate_input_output_schemas=False)
    event = S.StreamEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in event.pop("$defs", {}).items():
        comps.setdefault(name, sub)
    comps["StreamEvent"] = event
    content = schema["paths"]["/api/generate"]["post"]["responses"]["200"]["content"]
    content["application/x-ndjson"] = {"schema": {"$ref": "#/components/schemas/StreamEvent"}}
    app.openapi_schema = schema
    return schema


def openapi_schema() -> dict:
    """The API's OpenAPI schema (no model needed)."""
    return create_app(None).openapi()


def openapi_text() -> str:
    return json.dumps(openapi_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(openapi_text())
