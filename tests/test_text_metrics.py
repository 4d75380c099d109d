"""Text metrics on cases whose answers are known by hand."""

import itertools
import math

import pytest
import torch

from saesteer.evaluation.text_metrics import (
    FUNCTION_WORDS, Targets, content_words, distinct_ratio, first_difference, hits, is_clear, mean_logprob,
    repetition, score, text_metrics, token_words, words,
)


def test_words_are_lowercase_letter_runs():
    assert words("Don't go, 3 Dogs!\nÉcole") == ["don", "t", "go", "dogs", "école"]
    assert content_words(words("The dog and the cat")) == ["dog", "cat"]
    assert {"the", "and", "of", "is"} <= FUNCTION_WORDS


def test_token_words_span_tokens():
    assert token_words([" happ", "iness", " is", ",", " a-b"]) == ["happiness", "happiness", "is", None, "a"]
    assert token_words(["", "x"]) == [None, "x"]


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], [7]) == 0


def test_repetition_and_distinct():
    the = [262] * 4
    assert repetition(the) == pytest.approx(2 / 3)  # bigrams: 3, distinct: 1
    assert repetition([1, 2, 1, 2, 1, 2]) == pytest.approx(1 - 2 / 5)
    assert repetition([1, 2, 3, 4]) == 0.0
    assert repetition([5]) == 0.0
    assert distinct_ratio(the) == 0.25
    assert distinct_ratio([1, 2, 3, 1]) == 0.75


def test_hits_count_occurrences_and_distinct_words():
    t = Targets.of(words=["Dog", "the", "bark"], token_ids=[10, 11], lens_ids=[11, 12])
    assert t.words == frozenset({"dog", "bark"})  # function words never count
    h = hits([10, 11, 11, 12, 99], "The dog saw a dog; dogs bark.", t)
    assert (h.words, h.distinct_words, h.tokens, h.lens) == (3, 2, 3, 3)


def test_text_metrics_known_case():
    targets = Targets.of(words=["dragon", "fire"], lens_ids=[7])
    m = text_metrics([1, 7, 7, 3], " a dragon breathes fire", [1, 2, 3, 4], " a cat sat down", targets,
                     fluency=-3.5, baseline_fluency=-3.0)
    assert m.differs and m.first_diff == 1
    assert (m.fire_hits, m.fire_distinct, m.base_fire_hits) == (2, 2, 0)
    assert (m.lens_hits, m.base_lens_hits) == (2, 0)
    assert m.fluency_drop == pytest.approx(0.5)
    assert m.score == pytest.approx(2.5)  # 2 words + 0.25 * 2 lens tokens, fluent enough
    assert is_clear(m.fire_hits, m.base_fire_hits, m.fluency_drop)
    same = text_metrics([1, 2, 3, 4], " a cat sat down", [1, 2, 3, 4], " a cat sat down", targets)
    assert not same.differs and same.first_diff is None and same.score == 0.0


def test_score_cases():
    assert score(0, 0) == 0.0
    assert score(1, 0) == 1.0
    assert score(5, 0) == 2.0  # capped: two occurrences meet the criterion
    assert score(5, 1) == 2.0  # 4 occurrences beyond the unsteered text's 1: capped at 2
    assert score(2, 1) == 1.0  # only the occurrences beyond the unsteered text's count
    assert score(1, 3) == 0.0
    assert score(2, 0, repetition=1.0) == 1.0  # a loop halves it without fluency
    assert score(2, 0, fluency_drop=3.0) == pytest.approx(0.75 * 2 * math.exp(-2))
    assert score(2, 0, 5, 1) == pytest.approx(2.5)
    assert score(2, 0, 1, 3) == 2.0  # fewer lens tokens than the baseline add nothing


def test_score_reaches_two_exactly_when_clear():
    grid = itertools.product(range(0, 11), range(0, 4), range(0, 6), range(0, 3),
                             [-2.0, 0.0, 0.99, 1.0, 1.01, 1.5, 4.0])
    n_clear = 0
    for fh, bfh, lh, blh, drop in grid:
        clear = is_clear(fh, bfh, drop)
        n_clear += clear
        assert (score(fh, bfh, lh, blh, fluency_drop=drop) >= 2) == clear, (fh, bfh, lh, blh, drop)
    assert n_clear > 0
    assert not is_clear(3, 0, None)  # fluency not measured: not decidable
    assert is_clear(5, 3, 0.0) and not is_clear(4, 3, 0.0)   # 2 beyond the unsteered text's count


def test_mean_logprob_matches_full_forward(tiny_gpt2):
    prompt = [50256, 464]
    conts = [[3290, 318, 257], [11], []]
    got = mean_logprob(tiny_gpt2, prompt, conts, pad_token_id=50256, max_logits=1)  # one row per forward
    together = mean_logprob(tiny_gpt2, prompt, conts, pad_token_id=50256)
    for c, g, t in zip(conts, got, together):
        if not c:
            assert g is None and t is None
            continue
        seq = torch.tensor([prompt + c])
        with torch.no_grad():
            lp = tiny_gpt2(input_ids=seq).logits[0].log_softmax(-1)
        want = sum(float(lp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(c)) / len(c)
        assert g == pytest.approx(want, abs=1e-4)
        assert t == pytest.approx(want, abs=1e-4)


def _whole_batch_fluency(model, prompt, conts):
    """Mean log-probabilities as mean_logprob computed them before: one log-sum-exp over the whole batch."""
    width = len(prompt) + max(len(c) for c in conts)
    ids = torch.tensor([prompt + c + [0] * (width - len(prompt) - len(c)) for c in conts])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(prompt) + len(c) for c in conts])[:, None]).long()
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits.float()[:, len(prompt) - 1:-1]
    lp = pred.gather(-1, ids[:, len(prompt):, None]).squeeze(-1) - pred.logsumexp(-1)
    valid = mask[:, len(prompt):].float()
    return ((lp * valid).sum(-1) / valid.sum(-1)).tolist()


def test_fluency_log_sum_exp_in_row_blocks_equals_the_whole_batch(tiny_gpt2, monkeypatch):
    """Fluency takes the log-sum-exp over the vocabulary a few rows at a time: the same mean log-probabilities,
    to the bit, as over the whole batch at once."""
    from saesteer.evaluation import text_metrics

    prompt = [50256, 464, 3797]
    conts = [[318, 257, 922], [11], [290, 612, 837, 13, 198], [262, 3290], [11, 290]]
    one = [c[:1] for c in conts]  # one position per row: blocks keep two rows at least
    for cs in (conts, one):
        whole = _whole_batch_fluency(tiny_gpt2, prompt, cs)
        positions = max(len(c) for c in cs)
        for rows in (1, 2):  # rows per block (5 rows: with 2, the lone last row joins the block before it)
            monkeypatch.setattr(text_metrics, "LOGSUMEXP_BLOCK", rows * positions * 50257)
            assert text_metrics.mean_logprob(tiny_gpt2, prompt, cs) == whole, (positions, rows)
