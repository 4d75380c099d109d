"""Response schemas of the browsing endpoints (``/api/info``, ``/api/feature``, ``/api/search``,
``/api/features``), and what each sweep measure means."""

from __future__ import annotations

from typing import Literal

from saesteer.web.schemas import Schema

METRIC_MEANINGS = {
    "score": "The sweep's score: firing-word and promoted-token hits, less a fluency and repetition penalty "
             "(text_metrics.score); higher steers more clearly.",
    "steer": "Combined steer score: the firing-word and readback ranks against the other features' texts, with "
             "fluency and loops counted (evaluation.steer_score).",
    "word_rank": "Where the count of the feature's firing words in its own text ranks against every other swept "
                 "feature's text at the same value (1 = best; evaluation.word_rank).",
    "readback": "Model-internal measure: the feature's mean activation when the unsteered model reads the "
                "steered text back.",
    "readback_rank": "Where the feature's own readback ranks against every other swept feature's text at the same "
                     "value (1 = best).",
    "readback_p": "Chance of a readback rank this good if the text carried no trace of the feature.",
    "word_p": "Chance of a firing-word rank this good if the text carried no trace of the feature.",
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
    """Its rows in every results folder, best first (by ``steer`` where ranked, else ``score``)."""
    suggested_value: float | None
    """The clamp value of its best sweep row, by ``steer`` then ``score`` (what the page sends to the playground)."""
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
    """Its best steered text (by ``steer`` where ranked, else ``score``) that matches (or its best one)."""


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
