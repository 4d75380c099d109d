"""The validation's measures of one prompt's sweep: both tests against their permutation null, and each
measure's top 20 measured by the other."""

from __future__ import annotations

import re
from collections import Counter

import torch

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.errors import SaesteerError
from saesteer.evaluation.readback import top_fraction
from saesteer.sweep.rank import rank
from saesteer.validation.criterion import WORD_RULE, clear_at, word_levels
from saesteer.validation.nulls import PERMUTATIONS, TOP_FRACTION, Group, group_of, hits_matrix, null_counts

_LETTER = re.compile(r"[^\W\d_]")

TOP_N = 20


def _opening_spans(text: str, n_words: int) -> list:
    return [m for m in re.finditer(r"\S+", text) if _LETTER.search(m.group(0))][:n_words]


def _trim(text: str) -> str:
    return re.sub(r"[\s,.;:!?]+$", "", text)


def opening_words(text: str, n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of ``text`` that hold a letter, as they stand in it
    (what lies before the first such word, and punctuation after the last, left out); "" when none."""
    spans = _opening_spans(text, n_words)
    return _trim(text[spans[0].start():spans[-1].end()]) if spans else ""


def common_opening(texts: list[str], n_words: int) -> str:
    """The most common opening of ``texts``, word by word: the commonest first word, then the commonest
    second word among the texts that open with it, and so on (ties: the first in sorted order)."""
    seqs = [[m.group(0) for m in _opening_spans(t, n_words)] for t in texts]
    prefix: list[str] = []
    for i in range(n_words):
        counts = Counter(s[i] for s in seqs if len(s) > i and s[:i] == prefix)
        if not counts:
            break
        prefix.append(min(counts, key=lambda w: (-counts[w], w)))
    return _trim(" ".join(prefix))


def model_opening(lm, n_words: int = 4, reference=None) -> str:
    """The opening words of the text the model itself writes most readily (greedy from BOS, going on past
    end-of-text tokens, special tokens left out): a prompt that assumes nothing about the model's domain.

    A model whose greedy text opens with whitespace, punctuation or end-of-text gets the words that follow;
    one whose greedy text holds no word at all (a loop of newlines) gets the most common opening of its own
    samples (``reference``, a :class:`~saesteer.evaluation.reference.Reference`; :func:`common_opening`),
    else a one-line error."""
    out = generate_ids(lm.model, [[lm.bos_token_id]], GenerationConfig(max_new_tokens=max(32, 4 * n_words + 4),
                                                                       stop_at_eos=False),
                       eos_token_id=lm.eos_token_id, pad_token_id=lm.pad_token_id)[0]
    opening = opening_words(lm.continuation([lm.bos_token_id], out), n_words)
    if not opening and reference is not None:
        opening = common_opening([lm.continuation(row[:1], row[1:]) for row in reference.tokens.tolist()], n_words)
    if not opening:
        raise SaesteerError("the model's own text holds no words to take a prompt from; pass --prompt")
    return opening


def expected_hits(lm, reference, facts, n: int, new_tokens: int | None = None) -> list[float]:
    """Per feature: the mean number of its firing-word occurrences in one of the model's own reference texts,
    scaled to ``new_tokens`` tokens (what a text the model writes anyway holds, whichever feature is steered)."""
    rows = reference.tokens.tolist()
    texts = [lm.continuation(row[:1], row[1:]) for row in rows]
    per_text = hits_matrix(texts, [list(facts.words[f]) for f in range(n)]).float().mean(0)
    length = max(1, reference.tokens.shape[1] - 1)
    scale = 1.0 if new_tokens is None else new_tokens / length
    return [round(float(x) * scale, 4) for x in per_text]


def null_groups(annotated: list[list[dict]], facts, n: int) -> list[Group]:
    """One :class:`~saesteer.validation.nulls.Group` per sweep value."""
    firing = [list(facts.words[f]) for f in range(n)]
    groups = []
    for recs in annotated:
        for value in dict.fromkeys(float(r["value"]) for r in recs):
            groups.append(group_of([r for r in recs if float(r["value"]) == value], n, firing))
    return groups


def base_hits(baseline_text: str, facts, n: int) -> list[int]:
    """Per feature: its firing-word occurrences in the unsteered text."""
    return hits_matrix([baseline_text], [list(facts.words[f]) for f in range(n)])[0].tolist()


def base_clean(baseline, facts, n: int) -> torch.Tensor:
    """Per feature: the unsteered text holds none of its firing words (the ``clean`` rule's test)."""
    return torch.tensor([b == 0 for b in base_hits(baseline.text, facts, n)])


def cross_top(annotated: list[list[dict]], n: int = TOP_N, levels: list[float] | None = None) -> dict:
    """The first ``n`` features by each ranking (each at its best value), measured by the other measure:
    ``steer`` (what ``saesteer top`` shows) by both; the firing-word ``score`` and the firing-word rank
    (``words``) by the readback; the readback rank by firing words (clear at the features' ``levels``, see
    ``criterion.word_levels``; None: the sweep's own rule); and ``steer``'s weights for the two measures
    (``evaluation.chance``)."""
    recs = [r for group in annotated for r in group]
    by_steer = rank(recs, n=n, sort="steer")
    by_score = rank(recs, n=n, sort="score")
    by_words = rank(recs, n=n, sort="words")
    by_readback = rank(recs, n=n, sort="readback")

    def top5(rows):
        return sum(1 for r in rows if top_fraction(r.readback_rank, TOP_FRACTION))

    def clear(rows):
        if levels is None:
            return sum(1 for r in rows if r.clear)
        return sum(1 for r in rows if clear_at(r, levels[r.feature]))

    return {
        "top_steer": [r.feature for r in by_steer],
        "top_steer_readback_top5": top5(by_steer), "top_steer_clear": clear(by_steer),
        "top_score_readback_top5": top5(by_score), "top_score_clear": clear(by_score),
        "top_words_readback_top5": top5(by_words), "top_words_clear": clear(by_words),
        "top_readback_clear": clear(by_readback), "top_readback_readback_top5": top5(by_readback),
        "steer_weights": {"word": recs[0].get("word_weight", 1.0), "readback": recs[0].get("readback_weight", 1.0)}
        if recs else {"word": 1.0, "readback": 1.0},
    }


def measure_prompts(annotated: dict, baseline_texts: dict, facts, expected: list[float], n: int, *,
                    word_rule: str = WORD_RULE, permutations: int = PERMUTATIONS, seed: int = 0):
    """Both tests against their permutation null, and each ranking's top 20 measured by the other, for every
    prompt's annotated sweeps: ``(nulls, cross, levels)`` (``levels``: per label, ``criterion.word_levels``).
    The validation and :func:`saesteer.validation.rescore.rescore` both count through here."""
    levels = {lbl: word_levels(base_hits(baseline_texts[lbl], facts, n), expected, word_rule) for lbl in annotated}
    null_in = {lbl: (null_groups(annotated[lbl], facts, n), torch.tensor(levels[lbl], dtype=torch.float32))
               for lbl in annotated}
    nulls = null_counts(null_in, permutations=permutations, seed=seed)
    cross = {lbl: cross_top(annotated[lbl], levels=levels[lbl]) for lbl in annotated}
    return nulls, cross, levels
