"""The firing-word rank (each feature's words in its own text against every other feature's text) and the
steer score built on it and on the readback rank."""

import random

import pytest
import torch

from saesteer.evaluation.steer_score import loop_factor, steer_parts
from saesteer.evaluation.text_metrics import Targets, hits
from saesteer.evaluation.word_rank import word_counts, word_ranks
from saesteer.sweep.rank import annotate
from saesteer.validation.nulls import hits_matrix, rank_matrix


def rec(feature, text, value=1.0, differs=True, **kw):
    return {"feature": feature, "value": value, "differs": differs, "text": text, **kw}


WORDS = [["dog"], ["cat"], ["file"], ["lily"], ["bird"]]


def test_word_rank_against_other_features_texts():
    recs = [
        rec(0, "the dog saw a dog"),              # 2 dogs; the others' texts hold 0, 1, 0 -> above all
        rec(1, "a dog and a file, a file"),       # no cat here, 1 elsewhere: below the median
        rec(2, "a file is a file is a file"),     # 3 files; 2's text holds 2, 0's and 3's none -> above all
        rec(3, "lily cat"),                       # lily once; nobody else: above all
        rec(4, "bird bird bird", differs=False),  # equal to the unsteered text: no rank, not in any null
        rec(0, "dog", value=2.0),                 # another value: alone, no null
    ]
    got = word_ranks(recs, WORDS)
    # by chance (a text judged as another feature's) only text 3 for feature 1 ("cat", nowhere else) passes:
    # 1 of the 4 x 3 pairs
    assert got[(0, 1.0)] == {"word_rank": 1.0, "word_p": pytest.approx(1 / 4), "word_null": 3,
                             "word_chance": pytest.approx(1 / 12)}
    assert got[(1, 1.0)]["word_rank"] == pytest.approx(0.5 * 2 / 3)   # ties with 2 texts at 0, 1 text above
    assert got[(1, 1.0)]["word_p"] == pytest.approx((1 + 1 + 1) / 4)
    assert got[(2, 1.0)]["word_rank"] == 1.0 and got[(3, 1.0)]["word_rank"] == 1.0
    assert got[(4, 1.0)]["word_rank"] is None and got[(0, 2.0)] == {"word_rank": None, "word_p": None,
                                                                     "word_null": 0, "word_chance": None}


def test_stock_words_and_loops_give_no_credit_and_repeats_of_unsteered_words_do():
    # every text loops "is a file": feature 0, whose word is "file", is not above the others
    loops = [rec(f, "is a file is a file is a file") for f in range(5)]
    assert word_ranks(loops, [["file"]] * 5)[(0, 1.0)]["word_rank"] == 0.5
    # "lily" is in every text (the unsteered one too); feature 0's text holds unusually many
    lily = [rec(0, "lily lily lily and lily")] + [rec(f, "lily went out") for f in range(1, 5)]
    assert word_ranks(lily, [["lily"]] * 5)[(0, 1.0)]["word_rank"] == 1.0
    assert word_ranks(lily, [["lily"]] * 5)[(1, 1.0)]["word_rank"] == pytest.approx(0.5 * 3 / 4)  # 0 above it


def test_word_counts_are_the_sweeps_hits_and_ranks_agree_with_the_nulls_matrix():
    gen = random.Random(0)
    vocab = [f"zz{chr(97 + i)}" for i in range(12)]        # no function words (the facts leave them out)
    n = 30
    firing = [gen.sample(vocab, gen.randint(0, 4)) for _ in range(n)]
    texts = [" ".join(gen.choices(vocab + ["x", "ZZb"], k=gen.randint(0, 25))) for _ in range(n)]
    dense = word_counts(texts, firing).to_dense()
    for g in range(n):
        for f in range(n):
            assert dense[g, f] == hits([], texts[g], Targets.of(firing[f])).words
    assert torch.equal(hits_matrix(texts, firing), dense.to(torch.int32))
    changed = torch.tensor([gen.random() < 0.8 for _ in range(n)])
    ranks = word_ranks([rec(f, texts[f], differs=bool(changed[f])) for f in range(n)], firing)
    matrix = rank_matrix(dense.float(), changed)     # the permutation null's rule, on the counts
    for f in range(n):
        want = ranks[(f, 1.0)]["word_rank"]
        assert (want is None and matrix[f, f] == -1) or abs(float(matrix[f, f]) - want) < 1e-6


@pytest.mark.parametrize("rep, base, factor", [
    (0.2, None, 1.0), (0.625, None, 0.5), (1.0, None, 0.0),      # ordinary text free, loops to 0
    (0.8, 0.8, 1.0),                                              # no more than the unsteered text loops
    (0.9, 0.8, 0.5),                                              # half way from its loops to a pure loop
    (0.5, 0.1, pytest.approx(2 / 3)),                             # below 0.25 the unsteered text changes nothing
    (1.0, 1.0, 1.0),
])
def test_loop_factor_counts_repetition_beyond_the_unsteered_texts(rep, base, factor):
    assert loop_factor(rep, base) == factor


def test_steer_adds_the_word_and_readback_ranks():
    p = steer_parts({"word_rank": 0.9, "readback_rank": 1.0, "fire_hits": 3, "base_fire_hits": 1, "fluency_drop": 0.2,
                     "repetition": 0.9, "base_repetition": 0.9})
    assert p["words"] == pytest.approx(0.8) and p["internal"] == 1.0 and p["steer"] == pytest.approx(1.8)
    # the rank scales the count: as many occurrences as the other texts hold give nothing, however many
    assert steer_parts({"word_rank": 0.5, "fire_hits": 5})["words"] == 0
    assert steer_parts({"word_rank": 1.0, "fire_hits": 1})["words"] == 0.5      # one new occurrence: half
    assert steer_parts({"word_rank": 1.0, "fire_hits": 4, "base_fire_hits": 4})["words"] == 0   # none new
    assert steer_parts({"fire_hits": 5, "word_rank": None})["words"] == 1      # no rank: the count's term


def test_annotate_adds_word_ranks_and_the_unsteered_repetition():
    recs = [rec(0, "the dog saw a dog", repetition=0.9, fire_hits=2), rec(1, "a cat", repetition=0.1),
            rec(2, "nothing", repetition=0.6, differs=False), rec(3, "a cat and a cat", repetition=0.2)]
    words = [["dog"], ["cat"], ["nothing"], ["cat"]]
    out = annotate(recs, words)
    assert [r["word_rank"] for r in out] == [1.0, 0.5, None, 1.0]   # 1's one cat: between 0's none and 3's two
    assert {r["base_repetition"] for r in out} == {0.6}          # from the text equal to the unsteered one
    assert out[0]["steer"] == pytest.approx(1.0 * loop_factor(0.9, 0.6))
    assert annotate(recs, words, base_repetition=0.0)[0]["base_repetition"] == 0.0
    assert "word_rank" not in annotate(recs)[0] and annotate(recs)[0]["steer"] > 0   # no words: the count's term
