"""Endpoints that describe what is served: the model and SAE, a feature's page, the sweep browser."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from saesteer import __version__
from saesteer.steering.clamp import MODES
from saesteer.web import schemas as S
from saesteer.web import schemas_browse as B
from saesteer.web.errors import QUEUE_ERRORS, InputError
from saesteer.web.jobs import run_job
from saesteer.web.results_index import ResultsIndex
from saesteer.web.routes_steering import service_of

router = APIRouter()


@router.get("/api/info", response_model=B.InfoResponse, tags=["info"])
def info(request: Request) -> B.InfoResponse:
    """The model, SAE and results folders being served, and the request limits."""
    svc, worker, results = service_of(request), request.app.state.worker, request.app.state.results
    return B.InfoResponse(
        version=__version__, **svc.info(), modes=list(MODES),
        limits=B.Limits(max_prompt_chars=S.MAX_PROMPT_CHARS, max_prompt_tokens=S.MAX_PROMPT_TOKENS,
                        max_new_tokens=S.MAX_NEW_TOKENS, max_clamps=S.MAX_CLAMPS,
                        max_curve_values=S.MAX_CURVE_VALUES, max_positions=svc.max_positions,
                        queue_size=worker.queue_size, request_timeout_s=worker.timeout),
        results=[B.ResultsInfo(**f.summary(), sae=sae_of_folder(request, f)) for f in
                 (results.get(i) for i in range(len(results)))],
        saes=[B.SAEInfo(id=i, **{k: v for k, v in s.info().items() if k != "model"})
              for i, s in enumerate(request.app.state.services)],
        metric_meanings=B.METRIC_MEANINGS)


def sae_of_folder(request: Request, folder) -> int:
    """The served SAE a results folder's sweep used: the one at the folder's hook (0 when none is)."""
    hook = folder.manifest.get("hook")
    for i, svc in enumerate(request.app.state.services):
        if svc.hook == hook:
            return i
    return 0


def sweep_rows(results: ResultsIndex, feature: int, folders: list[int]) -> list[dict]:
    """The feature's rows in those results folders that have some."""
    out = []
    for i in folders:
        folder = results.get(i)
        rows = [r.to_dict() for r in folder.feature_rows(feature)]
        if rows:
            out.append({"results": folder.id, "label": folder.label, "rows": rows})
    return out


@router.get("/api/feature/{feature}", response_model=B.FeatureResponse, tags=["features"], responses=QUEUE_ERRORS)
async def feature(feature: Annotated[int, Path(ge=0, description="Feature index, in [0, d_sae).")],
                  request: Request,
                  sae: Annotated[int, Query(ge=0, lt=S.MAX_SAES, description="Which served SAE.")] = 0
                  ) -> B.FeatureResponse:
    """What the feature page shows: logit-lens tokens, feature facts where a results folder has them,
    the feature's rows in every results folder, and its Neuronpedia page for OpenAI v5 SAEs."""
    svc = service_of(request, sae)
    svc.check_feature(feature, ("path", "feature"))
    results = request.app.state.results
    folders = [i for i in range(len(results)) if sae_of_folder(request, results.get(i)) == sae]
    sweeps = await run_in_threadpool(sweep_rows, results, feature, folders)  # off the event loop
    out = await run_job(request, lambda job: svc.feature(feature, sweeps))
    return B.FeatureResponse(**out, sae=sae)


def folder_of(request: Request, number: int):
    results: ResultsIndex = request.app.state.results
    if not number < len(results):
        raise InputError(("query", "results"), f"unknown results folder {number}; there are {len(results)}"
                                               " (see /api/info)")
    return results.get(number)


@router.get("/api/search", response_model=B.SearchResponse, tags=["sweeps"])
def search(query: Annotated[S.SearchQuery, Query()], request: Request) -> B.SearchResponse:
    """A page of one results folder's rows: full-text search over the generated texts, sorted by a
    metric, paginated; with the firing words and lens tokens of the features on the page."""
    folder = folder_of(request, query.results)
    sort = query.sort or folder.default_sort()
    if sort not in folder.sort_keys():
        raise InputError(("query", "sort"), f"unknown sort key {sort!r}; use one of {', '.join(folder.sort_keys())}")
    total, rows = folder.search(query.q, sort, query.order, feature=query.feature,
                                per_feature=query.per_feature, offset=query.offset, limit=query.limit)
    return B.SearchResponse(results=folder.id, label=folder.label, total=total, offset=query.offset,
                            limit=query.limit, sort=sort, order=query.order, metrics=folder.metrics,
                            rows=[B.ResultRow(**r.to_dict()) for r in rows],
                            meanings={str(f): B.FeatureMeaning(firing_words=w, lens_tokens=t)
                                      for f, (w, t) in folder.meanings(r.feature for r in rows).items()})


@router.get("/api/features", response_model=B.FeatureSearchResponse, tags=["sweeps"])
def features(query: Annotated[S.FeatureQuery, Query()], request: Request) -> B.FeatureSearchResponse:
    """Search features by meaning: their firing words, logit-lens tokens and steered texts at once, ranked
    (3 points for the firing words, 2 for the lens tokens, plus the share of the feature's texts that
    match)."""
    folder = folder_of(request, query.results)
    total, hits = folder.meaning_search(query.q, query.offset, query.limit)
    return B.FeatureSearchResponse(results=folder.id, total=total, offset=query.offset, limit=query.limit,
                                   features=[B.FeatureHit(**h) for h in hits])
