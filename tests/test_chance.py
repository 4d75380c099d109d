"""How much of each measure chance explains (``evaluation.chance``): the sparse count against the dense ranks
of the validation's nulls, and the weights ``steer`` gives the two measures."""

import random

import pytest
import torch

from saesteer.evaluation.chance import chance_passes, measure_weights
from saesteer.evaluation.steer_score import steer_parts
from saesteer.sweep.rank import annotate, weigh
from saesteer.validation.nulls import rank_matrix


def dense_chance(matrix: torch.Tensor) -> int:
    """Off-diagonal entries in the top 5% of their column, by the validation's dense mid-ranks."""
    m = matrix.shape[0]
    ranks = rank_matrix(matrix, torch.ones(m, dtype=torch.bool))
    off = ~torch.eye(m, dtype=torch.bool)
    return int(((ranks >= 0.95) & off & (matrix > 0)).sum())


@pytest.mark.parametrize("seed", range(6))
def test_sparse_count_equals_the_dense_ranks(seed):
    gen = torch.Generator().manual_seed(seed)
    m = [2, 5, 23, 40, 61, 90][seed]
    density = [0.9, 0.5, 0.2, 0.05, 0.5, 0.1][seed]
    # small integers give many ties (like word counts); some columns are nearly full, some empty
    matrix = torch.randint(1, 4, (m, m), generator=gen).double() * (torch.rand(m, m, generator=gen) < density)
    matrix[:, 0] = 0.0
    if seed % 2:  # real values (the readback's path); even seeds keep integer counts (the words' path)
        matrix[:, 1] = torch.rand(m, generator=gen).double() + 0.1   # a full column of distinct values
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    assert chance_passes(rows, cols, matrix[rows, cols], m) == dense_chance(matrix)
    # entries stored as explicit zeros change nothing
    z_rows, z_cols = torch.nonzero(matrix == 0, as_tuple=True)
    all_rows, all_cols = torch.cat([rows, z_rows]), torch.cat([cols, z_cols])
    assert chance_passes(all_rows, all_cols, matrix[all_rows, all_cols], m) == dense_chance(matrix)


def test_a_column_full_of_values_passes_its_top_5_percent_by_chance():
    m = 41
    matrix = torch.zeros(m, m, dtype=torch.float64)
    matrix[:, 3] = torch.arange(1, m + 1, dtype=torch.float64)        # feature 3 reads distinct values everywhere
    rows, cols = torch.nonzero(matrix, as_tuple=True)
    # ranks (k - 1) / 40 for the k-th smallest: k = 39, 40, 41 reach 0.95; none is text 3's own (k = 4)
    assert chance_passes(rows, cols, matrix[rows, cols], m) == 3
    matrix[:, 3] = torch.arange(m + 1, 1, -1, dtype=torch.float64)   # now text 3 holds the 4th largest
    assert chance_passes(rows, cols, matrix[rows, cols], m) == 3
    matrix[3, 3] = 1000.0                                              # and now the largest: its own
    assert chance_passes(rows, cols, matrix[rows, cols], m) == 2


def recs(passes: dict[str, int], chance: dict[str, float], n: int = 100) -> list[dict]:
    out = []
    for i in range(n):
        r = {"feature": i, "value": 1.0, "differs": True}
        for name in ("word", "readback"):
            if name in chance:
                r[f"{name}_rank"] = 1.0 if i < passes[name] else 0.5
                r[f"{name}_chance"] = chance[name]
        out.append(r)
    return out


def test_weights_are_the_share_of_passes_chance_does_not_explain():
    # readback: 20 passes, 5 expected -> 0.75; words: 10 passes, 5 expected -> 0.5; scaled by the larger
    w = measure_weights(recs({"word": 10, "readback": 20}, {"word": 0.05, "readback": 0.05}))
    assert w == {"word": pytest.approx(0.5 / 0.75), "readback": 1.0}
    # words at chance: no weight at all
    w = measure_weights(recs({"word": 4, "readback": 20}, {"word": 0.05, "readback": 0.05}))
    assert w == {"word": 0.0, "readback": 1.0}
    # neither above chance, or nothing measured: both count as before
    assert measure_weights(recs({"word": 5, "readback": 3}, {"word": 0.05, "readback": 0.05})) == {"word": 1.0,
                                                                                                  "readback": 1.0}
    assert measure_weights([{"feature": 0, "value": 1.0}]) == {"word": 1.0, "readback": 1.0}
    # a measure not taken (no readback stored) leaves the other at 1 and keeps 1 itself
    assert measure_weights(recs({"word": 10}, {"word": 0.05})) == {"word": 1.0, "readback": 1.0}


def word(f: int) -> str:
    return "z" + chr(97 + f // 26) + chr(97 + f % 26)


def sweep(n: int, seed: int, informative_words: bool) -> list[dict]:
    """``n`` features at one value: each text reads back its own feature strongly; its words are the
    feature's own (``word(f)``) when ``informative_words``, else a stock word and a random feature's word."""
    gen = random.Random(seed)
    out = []
    for f in range(n):
        others = gen.sample([g for g in range(n) if g != f], 5)
        ids = [f] + others
        vals = [round(gen.uniform(2.0, 3.0), 4)] + [round(gen.uniform(0.1, 2.5), 4) for _ in others]
        text = f"{word(f)} {word(f)} and more" if informative_words else f"stock stock and {word(gen.randrange(n))}"
        out.append({"feature": f, "value": 1.0, "differs": True, "text": text, "fire_hits": 2, "base_fire_hits": 0,
                    "readback_ids": ids, "readback_vals": vals, "repetition": 0.0, "fluency_drop": 0.0})
    return out


def test_annotate_weighs_words_down_where_they_are_at_chance():
    words = [[word(f), "stock"] for f in range(60)]
    good = annotate(sweep(60, 0, informative_words=True), words)
    assert good[0]["word_weight"] == pytest.approx(1.0, abs=0.05) and good[0]["readback_weight"] > 0.9
    stock = annotate(sweep(60, 0, informative_words=False), words)
    assert stock[0]["word_weight"] < 0.2 and stock[0]["readback_weight"] == 1.0
    # steer counts the word term at its weight
    for r in stock:
        plain = steer_parts({k: v for k, v in r.items() if not k.endswith("_weight")})
        parts = steer_parts(r)
        assert parts["words"] == pytest.approx(r["word_weight"] * plain["words"])
        assert parts["internal"] == pytest.approx(plain["internal"]) and r["steer"] <= plain["steer"] + 1e-12
    assert any(steer_parts(r)["words"] < steer_parts({**r, "word_weight": None})["words"] for r in stock)


def test_weigh_pools_a_prompts_sweeps_into_one_set_of_weights():
    words = [[word(f), "stock"] for f in range(60)]
    a = sweep(60, 1, informative_words=False)
    b = [{**r, "value": 2.0} for r in sweep(60, 2, informative_words=True)]
    parts = [annotate(a, words), annotate(b, words)]
    assert parts[0][0]["word_weight"] != parts[1][0]["word_weight"]
    pooled = weigh([r for p in parts for r in p])
    whole = annotate(a + b, words)
    key = lambda r: (r["feature"], r["value"])
    assert {key(r): (r["word_weight"], r["steer"]) for r in pooled} == \
        {key(r): (r["word_weight"], r["steer"]) for r in whole}
