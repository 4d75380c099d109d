"""Endpoints that steer the model: the playground's generation and the feature page's strength curve."""

from __future__ import annotations

from fastapi import APIRouter, Request

from saesteer.web import schemas as S
from saesteer.web.errors import QUEUE_ERRORS, InputError
from saesteer.web.jobs import run_job, stream_job
from saesteer.web.service import Service

router = APIRouter(tags=["steering"])


def service_of(request: Request, sae: int = 0, loc: tuple = ("query", "sae")) -> Service:
    """The service of served SAE number ``sae``."""
    services = request.app.state.services
    if not services:
        raise RuntimeError("this app was built without a model (schema only)")
    if not 0 <= sae < len(services):
        raise InputError(loc, f"unknown SAE {sae}: {len(services)} are served (see /api/info)")
    return services[sae]


@router.post("/api/generate", response_model=S.GenerateResponse, responses={
    **QUEUE_ERRORS, 200: {"description": "The continuations (JSON), or with `stream: true` NDJSON `StreamEvent`s",
                          "content": {"application/x-ndjson": {}}}})
async def generate(req: S.GenerateRequest, request: Request):
    """Continue `prompt` unsteered and with `clamps` applied, side by side.

    With `"stream": true` the answer is `application/x-ndjson`: one `StreamEvent` per line, `queued`, then
    a `step` per generated token with both texts so far, then `result` (or `error` with a status, e.g.
    504 at the time limit). Validation and a full queue are answered before streaming starts (422, 503).
    """
    svc, play = service_of(request), request.app.state.playground
    clamps = play.check_clamps(req.clamps)
    svc.prompt_tokens(req.prompt, req.max_new_tokens)
    if not req.stream:
        out = await run_job(request, lambda job: play.generate(req, clamps, job.check))
        return S.GenerateResponse(**out)
    return stream_job(request.app.state.worker, lambda job, emit: play.generate(req, clamps, job.check, emit))


@router.post("/api/compare", response_model=S.CompareResponse, responses=QUEUE_ERRORS)
async def compare(req: S.CompareRequest, request: Request) -> S.CompareResponse:
    """A strength curve: `feature` clamped at each of `values`, beside the unsteered continuation, with
    the metrics of `evaluation.compare` (KL, fluency, on-target hits, score)."""
    svc = service_of(request, req.sae, ("body", "sae"))
    svc.check_feature(req.feature, ("body", "feature"))
    svc.prompt_tokens(req.prompt, req.max_new_tokens)
    out = await run_job(request, lambda job: svc.curve(req, job.check))
    return S.CompareResponse(**out)
