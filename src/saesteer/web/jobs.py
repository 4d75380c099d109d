"""Model work of one request, run on the :class:`~saesteer.web.worker.ModelWorker` from the event loop.

The event loop never blocks on the model: it waits for the job's future. The work stops when the request
passes its time limit (504) or when the client goes away: a plain request watches its connection for the
ASGI ``http.disconnect`` message while it waits, a streamed one stops when its body is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from saesteer.errors import SaesteerError
from saesteer.web.schemas import GenerateResponse
from saesteer.web.worker import Job, JobTimeout, ModelWorker


class ClientGone(Exception):
    """The client closed its connection before the answer was ready (its work was cancelled)."""


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the request body is read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_job(request: Request, fn: Callable[[Job], Any]) -> Any:
    """Run ``fn(job)`` on the app's model worker and return its result; cancel it if the client leaves."""
    worker: ModelWorker = request.app.state.worker
    job = worker.submit(fn)  # QueueFull -> 503
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({result, gone}, timeout=max(0.0, job.remaining()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if result in done:
            return result.result()
        job.cancel()
        if gone in done:
            raise ClientGone("the client closed the connection")
        raise JobTimeout(f"the request took longer than its time limit of {job.timeout:g} s")
    finally:
        gone.cancel()
        if not job.future.done():
            job.cancel()
        result.cancel()  # nobody waits for it any more (a no-op once done)


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _error(status: int, detail: str) -> bytes:
    return _line({"event": "error", "status": status, "detail": detail})


def _final(fut) -> bytes:
    """The last line of a stream: the result, or the error the job ended with."""
    if fut.cancelled():
        return _error(504, "the request was cancelled")
    exc = fut.exception()
    if isinstance(exc, JobTimeout):
        return _error(504, str(exc))
    if isinstance(exc, SaesteerError):
        return _error(422, str(exc))
    if exc is not None:
        return _error(500, f"{type(exc).__name__}: {exc}")
    result = GenerateResponse(**fut.result())
    return _line({"event": "result", "result": result.model_dump(mode="json")})


def stream_job(worker: ModelWorker, work: Callable[[Job, Callable], Any]) -> StreamingResponse:
    """Run ``work(job, emit)`` and stream NDJSON: ``queued``, each event it emits, then the result or error."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (server shutting down)
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = worker.submit(lambda job: work(job, emit))  # QueueFull -> 503 now
    job.future.add_done_callback(lambda _f: emit(None))

    async def body():
        try:
            yield _line({"event": "queued", "position": worker.position(job)})
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=max(0.0, job.remaining()))
                except asyncio.TimeoutError:
                    job.cancel()
                    yield _error(504, f"the request took longer than its time limit of {job.timeout:g} s")
                    return
                if event is None:
                    yield _final(job.future)
                    return
                yield _line(event)
        finally:
            if not job.future.done():
                job.cancel()  # the client went away: stop the model work

    return StreamingResponse(body(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
