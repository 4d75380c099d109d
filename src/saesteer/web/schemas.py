"""Request and response schemas of the web API (pydantic, frozen; attribute docstrings become the
descriptions in the OpenAPI schema).

Field names follow the CLI's options: ``prompt``, ``clamps`` (``--clamp FEATURE=VALUE``), ``mode``,
``max_new_tokens``, ``temperature``, ``top_p``, ``seed``. Limits are constants here, so that the schema
(``docs/openapi.json``) does not depend on the model being served; limits that do (the SAE's width, the
model's positions) are checked by the app and answered with the same 422 shape.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from saesteer.steering.values import MAX_ABS_VALUE  # the one rule for clamp values (steering.values)

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 256
MAX_CLAMPS = 16
MAX_CURVE_VALUES = 12
MAX_QUERY_CHARS = 200
MAX_PAGE = 200

Mode = Literal["delta", "reconstruct", "add"]
MODES = typing.get_args(Mode)
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
Feature = Annotated[StrictInt, Field(ge=0)]
MAX_SAES = 64
SAEIndex = Annotated[StrictInt, Field(ge=0, lt=MAX_SAES)]


METRIC_MEANINGS = {
    "score": "The sweep's score: firing-word and promoted-token hits, less a fluency and repetition penalty "
             "(text_metrics.score); higher steers more clearly.",
    "steer": "Combined steer score: firing words plus the readback rank, with fluency and loops counted "
             "(evaluation.steer_score).",
    "readback": "Model-internal measure: the feature's mean activation when the unsteered model reads the "
                "steered text back.",
    "readback_rank": "Where the feature's own readback ranks against every other swept feature's text at the same "
                     "value (1 = best).",
    "readback_p": "Chance of a readback rank this good if the text carried no trace of the feature.",
    "clamp": "The latent value the feature was clamped to (value x max activation for relative sweeps).",
    "fire_hits": "Occurrences of the feature's firing words in the text.",
    "base_fire_hits": "Occurrences of the feature's firing words in the unsteered text.",
    "lens_hits": "Generated tokens among the tokens its decoder direction promotes (logit lens).",
    "fluency": "Mean log-probability (nats/token) of the text under the unsteered model.",
    "fluency_drop": "The unsteered text's fluency minus this one's (nats/token; positive = less fluent).",
    "repetition": "Share of repeated n-grams in the text (loops).",
    "distinct": "Share of distinct tokens in the text.",
    "differs": "1 if the text differs from the unsteered one.",
    "first_diff": "Position of the first generated token that differs from the unsteered text.",
    "kl": "Mean KL(p_steered || p_unsteered) over the generated positions (nats).",
}
"""What each sweep measure means (shown on hover); measures not listed are shown without a meaning."""


class Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# --------------------------------------------------------------------------- requests
class ClampSpec(Schema):
    """Clamp one SAE feature to a value (the CLI's ``--clamp FEATURE=VALUE``)."""

    feature: Feature
    """Feature (latent) index, in ``[0, d_sae)``."""
    sae: SAEIndex = 0
    """Which served SAE (its ``id`` in ``/api/info``'s ``saes``); clamps of several SAEs apply together."""
    value: Value
    """Clamp value, in the SAE's latent units; finite, at most 1e5 in magnitude."""


class GenerationFields(Schema):
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    """Text to continue; null or empty: generation starts from the BOS token alone."""
    mode: Mode = "delta"
    """``delta``: add decode(z') - decode(z), keeping the SAE error; ``reconstruct``: replace the activation
    by decode(z'); ``add``: add value times the feature's decoder direction (Neuronpedia's steering)."""
    max_new_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)] = 20
    """Tokens to generate (the prompt's tokens plus these must fit in the model's positions)."""
    temperature: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.0
    """0 = greedy (argmax); above 0 samples from softmax(logits / temperature)."""
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    """Nucleus sampling threshold, in (0, 1]."""
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    """Seed for sampling (the same seed gives the same continuation)."""


class GenerateRequest(GenerationFields):
    """Continue a prompt twice: as the model is (unsteered) and with ``clamps`` applied (steered)."""

    clamps: Annotated[list[ClampSpec], Field(max_length=MAX_CLAMPS)] = []
    """Features to clamp, each at most once; empty: the steered continuation equals the unsteered one."""
    stream: bool = False
    """false: one JSON object when done. true: ``application/x-ndjson``, one ``StreamEvent`` per line as
    tokens are generated, the last one carrying the result (or an error)."""


DEFAULT_CURVE_VALUES = (0.0, 10.0, 20.0, 40.0, 80.0)


class CompareRequest(GenerationFields):
    """A strength curve: continue the prompt with one feature clamped at each value, beside the unsteered
    continuation."""

    feature: Feature
    """Feature to clamp, in ``[0, d_sae)``."""
    sae: SAEIndex = 0
    """Which served SAE."""
    values: Annotated[list[Value], Field(min_length=1, max_length=MAX_CURVE_VALUES)] = list(DEFAULT_CURVE_VALUES)
    """Clamp values, one continuation each."""


class SearchQuery(Schema):
    """Query parameters of the sweep browser's search."""

    results: Annotated[int, Field(ge=0)] = 0
    """Which results folder (its ``id`` from ``/api/info``)."""
    q: Annotated[str, Field(max_length=MAX_QUERY_CHARS)] = ""
    """Full-text search over the generated texts: every word must begin a word of the text (case-insensitive);
    ``"quoted phrases"`` must appear as written. Empty: every row."""
    sort: Annotated[str, Field(max_length=64)] = "score"
    """``feature``, ``value``, or a metric of the folder (``metrics`` in the answer); rows without it go last."""
    order: Literal["asc", "desc"] = "desc"
    """Sort order."""
    feature: Annotated[int, Field(ge=0)] | None = None
    """Only rows of this feature."""
    per_feature: bool = False
    """Keep only the first row of each feature in the chosen order (e.g. its best score)."""
    offset: Annotated[int, Field(ge=0)] = 0
    """Rows to skip (pagination)."""
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 50
    """Rows per page."""


# --------------------------------------------------------------------------- responses
class Continuation(Schema):
    """Generated tokens (after the prompt) and their text."""

    tokens: list[int]
    text: str


class GenerateResponse(Schema):
    """The unsteered and steered continuations of one prompt, and the settings that made them."""

    prompt: str | None
    prompt_tokens: list[int]
    """The prompt's token ids, BOS first."""
    clamps: list[ClampSpec]
    mode: Mode
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    unsteered: Continuation
    """The model as it is, no edit."""
    steered: Continuation
    """With ``clamps`` applied at the SAE's hook."""
    elapsed_s: float
    """Model time, in seconds."""


class PartialText(Schema):
    """A continuation so far, while it is being generated."""

    text: str
    """The whole continuation so far, decoded."""
    n_tokens: int


class StreamEvent(Schema):
    """One line of a streamed generation. ``event``: ``queued`` (accepted; ``position`` = requests ahead),
    ``step`` (``unsteered``/``steered`` so far), ``result`` (``result``: the final answer) or ``error``
    (``status``, ``detail``; 504 after the time limit)."""

    event: Literal["queued", "step", "result", "error"]
    position: int | None = None
    step: int | None = None
    unsteered: PartialText | None = None
    steered: PartialText | None = None
    result: GenerateResponse | None = None
    status: int | None = None
    detail: str | None = None


class CurvePoint(Schema):
    """One continuation of a strength curve and its metrics (those of ``evaluation.compare``)."""

    value: float | None
    """The clamp value (null for the unsteered continuation)."""
    tokens: list[int]
    text: str
    differs: bool
    """The continuation differs from the unsteered one."""
    kl: float
    """Mean KL(p_steered || p_unsteered) over the generated positions, nats."""
    fluency: float | None
    """Mean log-probability (nats/token) of the continuation under the unsteered model."""
    fluency_drop: float | None
    """The unsteered continuation's fluency minus this one's (positive = less fluent)."""
    repetition: float
    distinct: float
    hits_lens: int
    """Generated tokens among the feature's top logit-lens tokens."""
    hits_words: int | None
    """Occurrences of the feature's firing words (null without feature facts)."""
    score: float | None
    """``text_metrics.score`` (null without feature facts)."""


class CompareResponse(Schema):
    """A strength curve of one feature on one prompt: the unsteered continuation and one per value."""

    feature: int
    prompt: str | None
    prompt_tokens: list[int]
    mode: Mode
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    unsteered: CurvePoint
    points: list[CurvePoint]
    lens_tokens: list[str]
    """The logit-lens tokens counted by ``hits_lens``."""
    firing_words: list[str]
    """The firing words counted by ``hits_words`` (empty without feature facts)."""
    elapsed_s: float


class TokenScore(Schema):
    """A token with a number: its logit (logit lens) or its activation (firing tokens)."""

    id: int
    text: str
    value: float


class ActivationContext(Schema):
    """Reference text around one of the feature's top activations."""

    activation: float
    before: str
    token: str
    after: str


class ResultRow(Schema):
    """One row of a sweep: a feature clamped to a value, its generated text and metrics."""

    feature: int
    value: float | None
    """The clamp value (null for folders that only have ``sentences.txt``)."""
    text: str
    metrics: dict[str, float | None]
    """Numeric fields of the row (``score`` and the sweep's other metrics; booleans as 0/1)."""


class FeatureSweep(Schema):
    """The rows of one results folder for one feature."""

    results: int
    label: str
    rows: list[ResultRow]


class ActivationHistogram(Schema):
    """How the feature fires on the reference text of its facts."""

    tokens: int
    """Reference tokens counted."""
    active: int
    """Tokens on which it is active (activation > 0)."""
    share: float
    """``active / tokens``."""
    max: float
    edges: list[float]
    """Bin edges of the nonzero activations, from 0 to ``max``."""
    counts: list[int]


class FeatureResponse(Schema):
    """What the feature page shows."""

    feature: int
    sae: int = 0
    """Which served SAE."""
    d_sae: int
    hook: str
    neuronpedia_url: str | None
    """The feature's Neuronpedia page, for SAEs that Neuronpedia hosts (OpenAI v5)."""
    decoder_norm: float
    lens_top: list[TokenScore]
    """Tokens its decoder direction promotes most (logit lens)."""
    lens_bottom: list[TokenScore]
    """Tokens it suppresses most."""
    facts_from: str | None
    """The results folder whose feature facts gave the fields below (null: none matches this model and SAE)."""
    max_activation: float | None
    frequency: float | None
    """Share of reference tokens on which it is active."""
    firing_words: list[str]
    firing_tokens: list[TokenScore]
    contexts: list[ActivationContext]
    sweeps: list[FeatureSweep]
    """Its rows in every results folder, best score first."""
    suggested_value: float | None
    """The clamp value of its best-scoring sweep row (what the page sends to the playground)."""
    histogram: ActivationHistogram | None = None
    """Its activations on the reference text (null without feature facts)."""


class FeatureMeaning(Schema):
    """What a feature is about, from the results folder's feature facts."""

    firing_words: list[str]
    lens_tokens: list[str]
    """Tokens its decoder direction promotes most (logit lens)."""


class SearchResponse(Schema):
    """One page of a results folder's rows."""

    results: int
    label: str
    total: int
    """Rows matching the query (before pagination)."""
    offset: int
    limit: int
    sort: str
    order: Literal["asc", "desc"]
    metrics: list[str]
    """Metric names of the folder (sort keys besides ``feature`` and ``value``)."""
    rows: list[ResultRow]
    meanings: dict[str, FeatureMeaning] = {}
    """Firing words and lens tokens of the features on this page (by feature number; empty without facts)."""


class FeatureQuery(Schema):
    """Query parameters of the search for features by meaning."""

    results: Annotated[int, Field(ge=0)] = 0
    """Which results folder (its ``id`` from ``/api/info``)."""
    q: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    """Words (each a word prefix) or ``"quoted phrases"``, looked for in the features' firing words, their
    logit-lens tokens and their steered texts."""
    offset: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 25


class FeatureHit(Schema):
    """A feature found by meaning, with where the query matched."""

    feature: int
    score: float
    """3 if its firing words match, + 2 if its lens tokens do, + the share of its steered texts that do."""
    in_words: bool
    in_lens: bool
    texts_matching: int
    """Its steered texts that match."""
    texts: int
    firing_words: list[str]
    lens_tokens: list[str]
    best_text: str | None
    """Its best-scoring steered text that matches (or its best one)."""


class FeatureSearchResponse(Schema):
    """Features of a results folder ranked by how well they match the query."""

    results: int
    total: int
    offset: int
    limit: int
    features: list[FeatureHit]


class ResultsInfo(Schema):
    """One results folder given at start."""

    id: int
    label: str
    sae: int = 0
    """The served SAE its features belong to (the one at its hook; 0 when none matches)."""
    rows: int
    features: int
    metrics: list[str]
    prompt: str | None
    """The prompt the sweep continued (null: BOS alone)."""
    unsteered: str | None
    """The sweep's unsteered continuation, to read its texts against."""
    manifest: dict
    """The folder's ``manifest.json`` (its short top-level entries)."""


class Limits(Schema):
    """What requests may ask for."""

    max_prompt_chars: int
    max_prompt_tokens: int
    max_new_tokens: int
    max_clamps: int
    max_curve_values: int
    max_positions: int | None
    """The model's context length (prompt tokens + new tokens must fit), if it has one."""
    queue_size: int
    """Requests that may wait for the model; more are answered 503 with Retry-After."""
    request_timeout_s: float
    """Time limit of a request, queueing included (504 after it)."""


class SAEInfo(Schema):
    """One served SAE."""

    id: int
    sae: str
    hook: str
    d_sae: int
    neuronpedia_id: str | None


class InfoResponse(Schema):
    """The model, SAEs and results folders being served (``sae``, ``hook``, ``d_sae``: the first SAE's)."""

    version: str
    model: str
    sae: str
    hook: str
    d_sae: int
    neuronpedia_id: str | None
    modes: list[str]
    limits: Limits
    results: list[ResultsInfo]
    saes: list[SAEInfo]
    """Every served SAE, by ``id`` (the ``sae`` of clamps, curves and feature pages)."""
    metric_meanings: dict[str, str]
    """What each sweep measure means."""


class ErrorMessage(Schema):
    """An error (503 queue full, 504 time limit, 400 bad host)."""

    detail: str
