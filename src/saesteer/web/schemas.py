"""Request and response schemas of the web API (pydantic, frozen; attribute docstrings become the
descriptions in the OpenAPI schema).

Field names follow the CLI's options: ``prompt``, ``clamps`` (``--clamp FEATURE=VALUE``), ``mode``,
``max_new_tokens``, ``temperature``, ``top_p``, ``seed``. Limits are constants here, so that the schema
(``docs/openapi.json``) does not depend on the model being served; limits that do (the SAE's width, the
model's positions) are checked by the app and answered with the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from saesteer.steering.clamp import MODES
from saesteer.steering.values import MAX_ABS_VALUE  # the one rule for clamp values (steering.values)

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 256
MAX_CLAMPS = 16
MAX_CURVE_VALUES = 12
MAX_QUERY_CHARS = 200
MAX_PAGE = 200

Mode = Literal[MODES]  # every steering mode (steering.clamp.STEERING_MODES), named in the OpenAPI schema
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
Feature = Annotated[StrictInt, Field(ge=0)]
MAX_SAES = 64
SAEIndex = Annotated[StrictInt, Field(ge=0, lt=MAX_SAES)]


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
    sort: Annotated[str, Field(max_length=64)] = ""
    """``feature``, ``value``, or a metric of the folder (``metrics`` in the answer); rows without it go last.
    Empty: ``steer`` (``saesteer top``'s order) where the folder has it, else ``score``, else ``feature``."""
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


class FeatureQuery(Schema):
    """Query parameters of the search for features by meaning."""

    results: Annotated[int, Field(ge=0)] = 0
    """Which results folder (its ``id`` from ``/api/info``)."""
    q: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    """Words (each a word prefix) or ``"quoted phrases"``, looked for in the features' firing words, their
    logit-lens tokens and their steered texts."""
    offset: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 25


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


class ErrorMessage(Schema):
    """An error (503 queue full, 504 time limit, 400 bad host)."""

    detail: str
