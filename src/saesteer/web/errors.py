"""How the app answers errors: one shape for every 422, and the queue's 503/504, never a traceback."""

from __future__ import annotations

from typing import Sequence

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from saesteer.errors import SaesteerError
from saesteer.web.jobs import ClientGone
from saesteer.web.schemas import ErrorMessage
from saesteer.web.worker import JobTimeout, QueueFull


class InputError(Exception):
    """A request field the schema cannot check alone (it depends on the model or SAE): answered 422."""

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


QUEUE_ERRORS = {
    503: {"model": ErrorMessage, "description": "The model queue is full; retry after `Retry-After` seconds."},
    504: {"model": ErrorMessage, "description": "The request passed its time limit."},
}
"""The ``responses`` of endpoints that wait for the model (for the OpenAPI schema)."""


def validation(loc: Sequence, msg: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": list(loc), "msg": msg, "type": "value_error"}]}, status_code=422)


async def on_invalid(request, exc: RequestValidationError):
    # location, message and type only: echoing the input would repeat big prompts, and cannot carry NaN
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def on_http_error(request, exc: HTTPException):
    """Starlette's own errors; a body that is not JSON (or not UTF-8) becomes a 422 like any bad field."""
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):
        return validation(("body",), "the request body is not valid JSON (UTF-8)")
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def on_input_error(request, exc: InputError):
    return validation(exc.loc, exc.msg)


async def on_saesteer_error(request, exc: SaesteerError):
    return validation(("body",), str(exc))


async def on_queue_full(request, exc: QueueFull):
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})


async def on_timeout(request, exc: JobTimeout):
    return JSONResponse({"detail": str(exc)}, status_code=504)


async def on_client_gone(request, exc: ClientGone):
    return JSONResponse({"detail": str(exc)}, status_code=499)  # nobody reads it: the connection is closed


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for exc, handler in [(RequestValidationError, on_invalid), (HTTPException, on_http_error),
                         (InputError, on_input_error),
                         (SaesteerError, on_saesteer_error), (QueueFull, on_queue_full), (JobTimeout, on_timeout),
                         (ClientGone, on_client_gone)]:
        app.add_exception_handler(exc, handler)
