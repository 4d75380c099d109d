"""The web app: a page (playground, sweep browser, feature pages) and the JSON API behind it.

``create_app(steerer, results_dirs, queue_size=..., request_timeout=...)`` returns a FastAPI app:

* ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``; no CDN, no build step).
* ``GET /api/info``: model, SAE, limits, results folders.
* ``POST /api/generate``: unsteered and steered continuations; ``"stream": true`` streams NDJSON events.
* ``POST /api/compare``: a strength curve of one feature (``evaluation.compare``).
* ``GET /api/feature/{feature}``: logit lens, feature facts, sweep rows, Neuronpedia link.
* ``GET /api/search``: a page of a results folder's rows (search, sort, paginate).
* ``GET /openapi.json``: the schema (exported to ``docs/openapi.json``).

All model work goes through one :class:`~saesteer.web.worker.ModelWorker`: one job at a time, a bounded
queue (503 with ``Retry-After`` when full), a time limit per request (504). Requests name results
folders by number; no path is ever read from a request. Only ``Host`` headers naming this machine are
accepted (``allowed_hosts``), which keeps other web sites from reaching the API through DNS rebinding.

``python -m saesteer.web.app`` prints the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from typing import Annotated, Sequence

from fastapi import FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware

from saesteer import __version__
from saesteer.errors import SaesteerError
from saesteer.web import schemas as S
from saesteer.web.results_index import ResultsIndex
from saesteer.web.service import InputError, Service
from saesteer.web.worker import JobTimeout, ModelWorker, QueueFull

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_BODY_BYTES = 64 * 1024
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
                               " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
DESCRIPTION = """Steer a language model through SAE features, and browse sweeps over them.

Field names follow the CLI's options. Errors: 422 (bad field, with a message; includes unknown features,
non-finite values, prompts or token counts over the limits), 503 with `Retry-After` (the model queue is
full), 504 (the request passed its time limit), 413 (body over 64 KiB), 400 (a `Host` that is not this
machine)."""

ERRORS = {
    503: {"model": S.ErrorMessage, "description": "The model queue is full; retry after `Retry-After` seconds."},
    504: {"model": S.ErrorMessage, "description": "The request passed its time limit."},
}


def _validation(loc: Sequence, msg: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": list(loc), "msg": msg, "type": "value_error"}]}, status_code=422)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (by ``Content-Length``, and while reading any other body)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    resp = JSONResponse({"detail": f"the request body is over {self.max_bytes} bytes"}, status_code=413)
                    return await resp(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ValueError(f"the request body is over {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every response (pure ASGI, so streamed answers stream untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def _static_files() -> dict[str, bytes]:
    root = resources.files("saesteer.web") / "static"
    return {name: (root / name).read_bytes() for name in ("index.html", *STATIC)}


def create_app(steerer, results_dirs: Sequence = (), *, queue_size: int = 8, request_timeout: float = 120.0,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The web app over ``steerer`` (a :class:`~saesteer.steerer.Steerer` with an SAE) and the sweep results
    folders ``results_dirs`` (paths, or a ready :class:`ResultsIndex`).

    ``queue_size``: requests that may wait for the model (more get 503). ``request_timeout``: seconds a
    request may take, waiting included (then 504). ``allowed_hosts``: accepted ``Host`` names (default: this
    machine's loopback names; ``["*"]`` accepts any). ``steerer=None`` builds the app for its OpenAPI schema
    only.
    """
    results = results_dirs if isinstance(results_dirs, ResultsIndex) else ResultsIndex(results_dirs)
    service = Service(steerer, results) if steerer is not None else None
    worker = ModelWorker(queue_size, request_timeout) if steerer is not None else None
    files = _static_files()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if worker is not None:
            worker.close()

    app = FastAPI(title="saesteer", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, separate_input_output_schemas=False)
    app.state.service, app.state.worker, app.state.results = service, worker, results
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOCAL_HOSTS))
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)

    # ----------------------------------------------------------------- errors
    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError):
        # location, message and type only: echoing the input would repeat big prompts, and cannot carry NaN
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(InputError)
    async def on_input_error(request, exc: InputError):
        return _validation(exc.loc, exc.msg)

    @app.exception_handler(SaesteerError)
    async def on_saesteer_error(request, exc: SaesteerError):
        return _validation(("body",), str(exc))

    @app.exception_handler(QueueFull)
    async def on_queue_full(request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(JobTimeout)
    async def on_timeout(request, exc: JobTimeout):
        return JSONResponse({"detail": str(exc)}, status_code=504)

    def need_service() -> Service:
        if service is None:
            raise RuntimeError("this app was built without a model (schema only)")
        return service

    async def run(fn):
        """Run ``fn(job)`` on the model worker; wait for it without blocking the event loop."""
        need_service()
        job = worker.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout=max(0.0, job.remaining()))
        except asyncio.TimeoutError:
            job.cancel()
            raise JobTimeout(f"the request took longer than its time limit of {job.timeout:g} s") from None
        finally:
            if not job.future.done():
                job.cancel()  # the client went away

    # ----------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(files["index.html"], headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:  # a fixed set of names, never a path
            return JSONResponse({"detail": "not found"}, status_code=404)
        return Response(files[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    # ----------------------------------------------------------------- API
    @app.get("/api/info", response_model=S.InfoResponse, tags=["info"])
    def info() -> S.InfoResponse:
        """The model, SAE and results folders being served, and the request limits."""
        svc = need_service()
        return S.InfoResponse(
            version=__version__, **svc.info(), modes=["delta", "reconstruct"],
            limits=S.Limits(max_prompt_chars=S.MAX_PROMPT_CHARS, max_prompt_tokens=S.MAX_PROMPT_TOKENS,
                            max_new_tokens=S.MAX_NEW_TOKENS, max_clamps=S.MAX_CLAMPS,
                            max_curve_values=S.MAX_CURVE_VALUES, max_positions=svc.max_positions,
                            queue_size=worker.queue_size, request_timeout_s=worker.timeout),
            results=[S.ResultsInfo(**f.summary()) for f in (results.get(i) for i in range(len(results)))])

    @app.post("/api/generate", response_model=S.GenerateResponse, tags=["steering"], responses={
        **ERRORS, 200: {"description": "The continuations (JSON), or with `stream: true` NDJSON `StreamEvent`s",
                        "content": {"application/x-ndjson": {}}}})
    async def generate(req: S.GenerateRequest):
        """Continue `prompt` unsteered and with `clamps` applied, side by side.

        With `"stream": true` the answer is `application/x-ndjson`: one `StreamEvent` per line, `queued`, then
        a `step` per generated token with both texts so far, then `result` (or `error` with a status, e.g.
        504 at the time limit). Validation and a full queue are answered before streaming starts (422, 503).
        """
        svc = need_service()
        clamps = svc.check_clamps(req.clamps)
        svc.prompt_tokens(req.prompt, req.max_new_tokens)
        if not req.stream:
            out = await run(lambda job: svc.generate(req, clamps, job.check))
            return S.GenerateResponse(**out)
        return _stream_generation(svc, worker, req, clamps)

    @app.post("/api/compare", response_model=S.CompareResponse, tags=["steering"], responses=ERRORS)
    async def compare(req: S.CompareRequest) -> S.CompareResponse:
        """A strength curve: `feature` clamped at each of `values`, beside the unsteered continuation, with
        the metrics of `evaluation.compare` (KL, fluency, on-target hits, score)."""
        svc = need_service()
        svc.check_feature(req.feature, ("body", "feature"))
        svc.prompt_tokens(req.prompt, req.max_new_tokens)
        out = await run(lambda job: svc.curve(req, job.check))
        return S.CompareResponse(**out)

    @app.get("/api/feature/{feature}", response_model=S.FeatureResponse, tags=["features"], responses=ERRORS)
    async def feature(feature: Annotated[int, Path(ge=0, description="Feature index, in [0, d_sae).")]
                      ) -> S.FeatureResponse:
        """What the feature page shows: logit-lens tokens, feature facts where a results folder has them,
        the feature's rows in every results folder, and its Neuronpedia page for OpenAI v5 SAEs."""
        svc = need_service()
        svc.check_feature(feature, ("path", "feature"))

        def sweep_rows() -> list[dict]:  # file reading: off the event loop
            out = []
            for i in range(len(results)):
                folder = results.get(i)
                rows = [r.to_dict() for r in folder.feature_rows(feature)]
                if rows:
                    out.append({"results": folder.id, "label": folder.label, "rows": rows})
            return out

        sweeps = await run_in_threadpool(sweep_rows)
        out = await run(lambda job: svc.feature(feature, sweeps))
        return S.FeatureResponse(**out)

    @app.get("/api/search", response_model=S.SearchResponse, tags=["sweeps"])
    def search(query: Annotated[S.SearchQuery, Query()]) -> S.SearchResponse:
        """A page of one results folder's rows: full-text search over the generated texts, sorted by a
        metric, paginated."""
        if not query.results < len(results):
            raise InputError(("query", "results"), f"unknown results folder {query.results}; there are"
                                                   f" {len(results)} (see /api/info)")
        folder = results.get(query.results)
        if query.sort not in folder.sort_keys():
            raise InputError(("query", "sort"), f"unknown sort key {query.sort!r}; use one of"
                                                f" {', '.join(folder.sort_keys())}")
        total, rows = folder.search(query.q, query.sort, query.order, feature=query.feature,
                                    per_feature=query.per_feature, offset=query.offset, limit=query.limit)
        return S.SearchResponse(results=folder.id, label=folder.label, total=total, offset=query.offset,
                                limit=query.limit, sort=query.sort, order=query.order, metrics=folder.metrics,
                                rows=[S.ResultRow(**r.to_dict()) for r in rows])

    app.openapi = lambda: _openapi(app)
    return app


def _stream_generation(svc: Service, worker: ModelWorker, req, clamps) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (server shutting down)
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = worker.submit(lambda job: svc.generate(req, clamps, job.check, emit))  # QueueFull -> 503 now
    job.future.add_done_callback(lambda _f: emit(None))

    def line(obj) -> bytes:
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def error(status: int, detail: str) -> bytes:
        return line({"event": "error", "status": status, "detail": detail})

    async def body():
        try:
            yield line({"event": "queued", "position": worker.position(job)})
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=max(0.0, job.remaining()))
                except asyncio.TimeoutError:
                    job.cancel()
                    yield error(504, f"the request took longer than its time limit of {job.timeout:g} s")
                    return
                if event is not None:
                    yield line(event)
                    continue
                fut = job.future
                if fut.cancelled():
                    yield error(504, "the request was cancelled")
                elif fut.exception() is not None:
                    exc = fut.exception()
                    if isinstance(exc, JobTimeout):
                        yield error(504, str(exc))
                    elif isinstance(exc, SaesteerError):
                        yield error(422, str(exc))
                    else:
                        yield error(500, f"{type(exc).__name__}: {exc}")
                else:
                    result = S.GenerateResponse(**fut.result())
                    yield line({"event": "result", "result": result.model_dump(mode="json")})
                return
        finally:
            if not job.future.done():
                job.cancel()  # the client went away: stop the model work

    return StreamingResponse(body(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


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
