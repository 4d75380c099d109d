"""Metrics of one steered continuation against the unsteered one: pure functions on ids and text.

Everything here is cheap enough to run on every row of a sweep over all of an SAE's features, and
has no state. The one function that needs a model, :func:`mean_logprob` (fluency), only runs it
teacher-forced, without hooks.

Words: a *word* is a run of letters (``[^\\W\\d_]+``) in the decoded text, lower-cased. *Content words*
are words not in :data:`FUNCTION_WORDS`, a small stop list of English function words.

The single ``score`` and the ``clear`` criterion it is built to predict are defined in
:func:`score` and :func:`is_clear`; ``docs/sweeps.md`` explains the choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from saesteer.models.hook_sites import vocab_size

_WORD = re.compile(r"[^\W\d_]+")

FUNCTION_WORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any no every each all both either neither other another such
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    myself yourself himself herself itself ourselves themselves one ones
    who whom whose which what where when why how whether there here then than
    be is am are was were been being have has had having do does did doing done
    will would shall should can could may might must ought
    and or but nor so yet if because as while until unless though although since
    of in on at by for with about against between into through during before after above below to
    from up down out off over under again further once
    not only own same too very just also s t d ll m o re ve y don didn doesn isn wasn aren weren
    """.split()
)
"""English function words, removed before counting on-target words (they say nothing of a topic)."""

CLEAR_MIN_HITS = 2
"""A continuation is *clear* with at least this many on-target word occurrences ..."""
CLEAR_MAX_FLUENCY_DROP = 1.0
"""... and a mean log-probability at most this many nats/token below the unsteered text's."""


# --------------------------------------------------------------------------- words and tokens
def words(text: str) -> list[str]:
    """The words of ``text``: lower-cased runs of letters, in order (``"Don't go!"`` -> don, t, go)."""
    return [w.lower() for w in _WORD.findall(text)]


def content_words(ws: Iterable[str]) -> list[str]:
    """``ws`` without function words (and without single letters)."""
    return [w for w in ws if len(w) > 1 and w not in FUNCTION_WORDS]


def token_words(token_texts: Sequence[str]) -> list[str | None]:
    """For each token (given as its text) of one sequence, the word it is part of, lower-cased; None for a
    token without letters. A word spans tokens: ``[" happ", "iness"]`` gives ``["happiness", "happiness"]``.
    A token with several letter runs (``"a-b"``) belongs to its first.
    """
    text = "".join(token_texts)
    spans = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD.finditer(text)]
    out: list[str | None] = []
    pos, j = 0, 0
    for t in token_texts:
        start, end = pos, pos + len(t)
        pos = end
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        out.append(spans[j][2] if j < len(spans) and spans[j][0] < end else None)
    return out


def first_difference(tokens: Sequence[int], baseline: Sequence[int]) -> int | None:
    """The first position where ``tokens`` and ``baseline`` differ (a length difference counts), or None."""
    for i, (a, b) in enumerate(zip(tokens, baseline)):
        if a != b:
            return i
    if len(tokens) != len(baseline):
        return min(len(tokens), len(baseline))
    return None


def repetition(tokens: Sequence[int], n: int = 2) -> float:
    """Share of the ``n``-grams of ``tokens`` that repeat an earlier one (``1 - distinct/total``), 0..1.

    Degenerate loops score high: ``"the the the the"`` gives 2/3 for bigrams, a 10-token loop of one token
    8/9; ordinary 10-token text gives 0. Fewer than two n-grams give 0.
    """
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_ratio(tokens: Sequence[int]) -> float:
    """Distinct tokens / tokens (1.0 for an empty sequence)."""
    return len(set(tokens)) / len(tokens) if tokens else 1.0


# --------------------------------------------------------------------------- on-target hits
@dataclass(frozen=True)
class Targets:
    """What counts as on target for one feature (from ``feature_facts``)."""

    words: frozenset[str] = frozenset()
    """The feature's firing words (content words only)."""
    token_ids: frozenset[int] = frozenset()
    """The tokens on which the feature fires most."""
    lens_ids: frozenset[int] = frozenset()
    """The tokens its decoder direction promotes most (logit lens)."""

    @staticmethod
    def of(words: Iterable[str] = (), token_ids: Iterable[int] = (), lens_ids: Iterable[int] = ()) -> "Targets":
        return Targets(frozenset(content_words(w.lower() for w in words)), frozenset(int(t) for t in token_ids),
                       frozenset(int(t) for t in lens_ids))


@dataclass(frozen=True)
class Hits:
    """How much of one text is on target."""

    words: int
    """Occurrences of firing words among the text's words."""
    distinct_words: int
    """Different firing words in the text."""
    tokens: int
    """Tokens that are among the feature's firing tokens."""
    lens: int
    """Tokens that are among the feature's logit-lens tokens."""


def hits(tokens: Sequence[int], text: str, targets: Targets) -> Hits:
    """Count ``tokens``/``text`` against ``targets``."""
    ws = [w for w in words(text) if w in targets.words]
    return Hits(
        words=len(ws),
        distinct_words=len(set(ws)),
        tokens=sum(1 for t in tokens if t in targets.token_ids),
        lens=sum(1 for t in tokens if t in targets.lens_ids),
    )


# --------------------------------------------------------------------------- score
@dataclass
class TextMetrics:
    """The metrics of one steered continuation (``base_*``: the same count on the unsteered text)."""

    differs: bool
    first_diff: int | None
    fire_hits: int
    fire_distinct: int
    fire_token_hits: int
    lens_hits: int
    base_fire_hits: int
    base_fire_token_hits: int
    base_lens_hits: int
    repetition: float
    distinct: float
    fluency: float | None = None
    """Mean log-probability (nats/token) of the steered tokens under the unsteered model, if measured."""
    fluency_drop: float | None = None
    """Unsteered text's mean log-probability minus the steered text's (positive = less fluent)."""
    score: float = 0.0
    readback_ids: list[int] | None = None
    """With readback measured (``evaluation.readback``): the latents active in the text as the unsteered model
    reads it ..."""
    readback_vals: list[float] | None = None
    """... and their mean activations over the generated positions."""

    def to_dict(self) -> dict:
        return asdict(self)


def score(fire_hits: int, base_fire_hits: int, lens_hits: int = 0, base_lens_hits: int = 0, *,
          repetition: float = 0.0, fluency_drop: float | None = None) -> float:
    """How clearly and coherently one continuation steers toward its feature (see docs/sweeps.md).

    ``score = evidence * coherence``:

    * ``evidence = min(gain, 2) + 0.25 * min(lens_gain, 2)``, where ``gain = max(0, fire_hits -
      base_fire_hits)`` is the firing-word occurrences beyond the unsteered text's, and
      ``lens_gain = max(0, lens_hits - base_lens_hits)``. Firing
      words are the evidence; logit-lens tokens only break ties (at most 0.5, so they never lift one
      word to two).
    * ``coherence``: with fluency measured, 1 if the fluency drop is at most 1 nat/token, else
      ``0.75 * exp(-(drop - 1))``; without it, ``1 - 0.5 * repetition`` (loops are the cheap sign of
      broken text).

    With fluency measured, ``score >= 2`` holds exactly when :func:`is_clear` does.
    """
    gain = float(max(0, fire_hits - base_fire_hits))
    evidence = min(gain, float(CLEAR_MIN_HITS)) + 0.25 * min(max(0, lens_hits - base_lens_hits), 2)
    if fluency_drop is not None and not math.isnan(fluency_drop):
        coherence = 1.0 if fluency_drop <= CLEAR_MAX_FLUENCY_DROP else 0.75 * math.exp(-(fluency_drop - CLEAR_MAX_FLUENCY_DROP))
    else:
        coherence = 1.0 - 0.5 * min(max(repetition, 0.0), 1.0)
    return evidence * coherence


def is_clear(fire_hits: int, base_fire_hits: int, fluency_drop: float | None) -> bool:
    """The criterion the score predicts: the continuation has at least 2 more firing-word occurrences
    (function words removed) than the unsteered text, and its fluency is at most 1 nat/token below the
    unsteered text's. A feature is clear when some value gives a clear continuation. (Before issue 16's
    second round the unsteered text had to hold none: ``validation.criterion.word_levels``' ``clean`` rule.)"""
    return (fire_hits - base_fire_hits >= CLEAR_MIN_HITS and fluency_drop is not None
            and fluency_drop <= CLEAR_MAX_FLUENCY_DROP)


def text_metrics(tokens: Sequence[int], text: str, baseline_tokens: Sequence[int], baseline_text: str,
                 targets: Targets, *, fluency: float | None = None, baseline_fluency: float | None = None,
                 baseline_hits: Hits | None = None) -> TextMetrics:
    """All metrics of one continuation. ``baseline_hits`` may be passed when already counted."""
    h = hits(tokens, text, targets)
    b = baseline_hits if baseline_hits is not None else hits(baseline_tokens, baseline_text, targets)
    rep = repetition(tokens)
    drop = None
    if fluency is not None and baseline_fluency is not None:
        drop = baseline_fluency - fluency
    first = first_difference(tokens, baseline_tokens)
    return TextMetrics(
        differs=first is not None,
        first_diff=first,
        fire_hits=h.words,
        fire_distinct=h.distinct_words,
        fire_token_hits=h.tokens,
        lens_hits=h.lens,
        base_fire_hits=b.words,
        base_fire_token_hits=b.tokens,
        base_lens_hits=b.lens,
        repetition=rep,
        distinct=distinct_ratio(tokens),
        fluency=fluency,
        fluency_drop=drop,
        score=score(h.words, b.words, h.lens, b.lens, repetition=rep, fluency_drop=drop),
    )


# --------------------------------------------------------------------------- fluency
LOGSUMEXP_BLOCK = 1 << 22
"""Logits per :func:`row_logsumexp` block (16 MiB in float32)."""


def row_logsumexp(logits: Tensor) -> Tensor:
    """``logits.logsumexp(-1)`` for ``[rows, positions, vocab]``, a few rows at a time: the same values (each
    position's sum is its own, reduced in the same order whenever a call has two or more positions, so no
    block is left with one), over twice as fast on CPU over a 50k vocabulary, where a whole batch's logits
    overflow the cache."""
    rows, positions = logits.shape[0], logits.shape[1]
    least = 1 if positions > 1 else 2
    step = max(least, LOGSUMEXP_BLOCK // max(1, positions * logits.shape[2]))
    if logits.device.type != "cpu" or step >= rows:
        return logits.logsumexp(-1)
    starts = list(range(0, rows, step))
    if rows - starts[-1] < least:
        starts.pop()  # the lone last row joins the block before it
    ends = starts[1:] + [rows]
    return torch.cat([logits[a:b].logsumexp(-1) for a, b in zip(starts, ends)])


def mean_logprob(model, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                 pad_token_id: int = 0, max_logits: int = 1 << 25) -> list[float | None]:
    """Mean log-probability (nats/token) of each continuation after ``prompt`` under ``model`` as it is
    (teacher-forced, no hooks); None for an empty continuation.

    Rows share the prompt, so they are right-padded with an attention mask and need no position ids.
    ``max_logits`` bounds the logits held at once (rows per forward = max_logits / (length * vocab)).
    """
    prompt = [int(t) for t in prompt]
    out: list[float | None] = [None] * len(continuations)
    todo = [i for i, c in enumerate(continuations) if len(c) > 0]
    if not todo or not prompt:
        return out
    device = next(model.parameters()).device
    vocab = vocab_size(model)
    width = len(prompt) + max(len(continuations[i]) for i in todo)
    per_call = max(1, max_logits // (width * vocab))
    with torch.no_grad():
        for s in range(0, len(todo), per_call):
            rows = todo[s:s + per_call]
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                seq = prompt + [int(t) for t in continuations[i]]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            # Position p predicts token p + 1; the continuation starts at len(prompt).
            pred = logits[:, len(prompt) - 1:-1]
            target = ids[:, len(prompt):]
            lp = pred.gather(-1, target[..., None]).squeeze(-1) - row_logsumexp(pred)
            valid = mask[:, len(prompt):].to(lp.dtype)
            means = (lp * valid).sum(-1) / valid.sum(-1)
            for b, i in enumerate(rows):
                out[i] = float(means[b])
    return out
