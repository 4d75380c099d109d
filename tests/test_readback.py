"""The model-internal measure (readback), its rank against other features' texts, and the combined steer score."""

import math
import random

import pytest
import torch

from saesteer.cli.main import run
from saesteer.errors import SaesteerError
from saesteer.evaluation.activations import hook_activations
from saesteer.evaluation.chance import measure_passes
from saesteer.evaluation.readback import readback_ranks, readback_vectors, sparse, top_fraction
from saesteer.evaluation.steer_score import explain, steer_parts, steer_score
from saesteer.sweep import Sweep, top
from saesteer.sweep import store as st
from saesteer.sweep.rank import annotate_folder

pytestmark = pytest.mark.usefixtures("one_thread")



def test_readback_vectors_equal_each_text_read_alone(small_steerer):
    lm, sae, hook = small_steerer.lm, small_steerer.sae, small_steerer.hook_name
    prompt = lm.encode("The dragon")
    conts = [[262, 1110, 318], [11, 290], [], [464, 3290, 1110, 318, 257]]
    got = readback_vectors(lm.model, sae, hook, prompt, conts, pad_token_id=lm.pad_token_id, rows_per_call=3)
    assert got.shape == (4, sae.d_sae)
    for i, c in enumerate(conts):
        if not c:
            assert torch.count_nonzero(got[i]) == 0
            continue
        acts = hook_activations(lm.model, hook, torch.tensor([prompt + c]))[0, len(prompt):]
        want = sae.encode(acts).float().clamp(min=0).mean(0)
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-6)
    ids, vals = sparse(got[0])
    assert ids == sorted(ids) and all(v > 0 for v in vals) and len(ids) == int((got[0] > 0).sum())


def rec(feature, value, vec: dict, differs=True):
    return {"feature": feature, "value": value, "differs": differs, "readback_ids": sorted(vec),
            "readback_vals": [vec[k] for k in sorted(vec)]}


def test_rank_against_other_features_texts_with_ties_and_unchanged_texts():
    recs = [
        rec(0, 1.0, {0: 5.0, 1: 1.0}),       # feature 0's own text: 0 reads 5
        rec(1, 1.0, {0: 2.0, 1: 1.0}),       # feature 1's text: 1 reads 1, tied with 0's text
        rec(2, 1.0, {0: 5.0, 2: 0.5}),       # 0 reads 5 here too (tie); 2 reads 0.5, 0 elsewhere
        rec(3, 1.0, {}),                     # 3 absent from its own text: 0, tied with two others
        rec(4, 1.0, {0: 9.0, 4: 9.0}, differs=False),   # equal to the unsteered text: no evidence, no null
        rec(0, 2.0, {0: 1.0}),               # another value: its own null (a single text: no rank)
    ]
    ranks = readback_ranks(recs)
    # Feature 0: null = texts of 1, 2, 3 (4 is unchanged) read 2, 5, 0 -> below 2, equal 1 -> (2 + .5) / 3.
    assert ranks[(0, 1.0)]["readback_rank"] == pytest.approx(2.5 / 3)
    assert ranks[(0, 1.0)]["readback_p"] == pytest.approx((0 + 0.5 + 1) / 4)
    assert ranks[(1, 1.0)]["readback_rank"] == pytest.approx((2 + 0.5) / 3)   # 0's text ties, 2's and 3's read 0
    assert ranks[(2, 1.0)]["readback_rank"] == pytest.approx(1.0)
    assert ranks[(3, 1.0)]["readback_rank"] == pytest.approx((0 + 0.5 * 3) / 3)  # all three others tie at 0
    assert ranks[(4, 1.0)]["readback_rank"] is None
    assert ranks[(0, 2.0)]["readback_rank"] is None and ranks[(0, 1.0)]["readback_null"] == 3
    assert top_fraction(1.0) and not top_fraction(0.9) and not top_fraction(None)


def plain_readback_ranks(records):
    """The readback ranks by the module docstring's definition, entry by entry (the plain path)."""
    out = {}
    for value in {float(r["value"]) for r in records}:
        recs = [r for r in records if float(r["value"]) == value]
        changed = [r for r in recs if r["differs"]]
        vec = {r["feature"]: dict(zip(r["readback_ids"], r["readback_vals"])) for r in changed}
        for r in recs:
            f, others = r["feature"], [g for g in vec if g != r["feature"]]
            if not r["differs"] or not others:
                out[(f, value)] = None
                continue
            own = vec[f].get(f, 0.0)
            below = sum(vec[g].get(f, 0.0) < own for g in others)
            equal = sum(vec[g].get(f, 0.0) == own for g in others)
            out[(f, value)] = (below + 0.5 * equal) / len(others)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_ranks_equal_the_plain_definition(seed):
    gen = random.Random(seed)
    n = [3, 17, 40, 64][seed]
    recs = []
    for value in (1.0, 2.5):
        for f in range(n):
            ids = sorted(gen.sample(range(n + 5), gen.randint(0, n // 2 + 2)))   # some latents beyond the sweep
            recs.append(rec(f, value, {i: float(gen.choice([0.5, 1.0, 2.0, round(gen.random(), 6)])) for i in ids},
                            differs=gen.random() > 0.15))
    got = readback_ranks(recs)
    want = plain_readback_ranks(recs)
    assert {k: v["readback_rank"] for k, v in got.items()} == pytest.approx(want)


@pytest.mark.parametrize("fields, words, internal, steer", [
    ({"fire_hits": 2, "base_fire_hits": 0, "readback_rank": 1.0, "fluency_drop": 0.5, "repetition": 0.1}, 1, 1, 2),
    ({"fire_hits": 5, "base_fire_hits": 0, "readback_rank": 0.5}, 1, 0, 1),
    ({"fire_hits": 1, "base_fire_hits": 0, "readback_rank": 0.75}, 0.5, 0.5, 1),
    ({"fire_hits": 6, "base_fire_hits": 2}, 1, 0, 1),         # 4 beyond the unsteered text's 2: full credit
    ({"fire_hits": 3, "base_fire_hits": 2}, 0.5, 0, 0.5),     # only the occurrences beyond it count
    ({"fire_hits": 2, "base_fire_hits": 0, "fluency_drop": 2.0}, 1, 0, math.exp(-1)),
    ({"fire_hits": 2, "base_fire_hits": 0, "repetition": 1.0}, 1, 0, 0),    # a loop scores nothing
    ({"fire_hits": 2, "base_fire_hits": 0, "readback_rank": 1.0, "differs": False}, 1, 1, 0),
])
def test_steer_score_on_known_values(fields, words, internal, steer):
    p = steer_parts(fields)
    assert p["words"] == pytest.approx(words) and p["internal"] == pytest.approx(internal)
    assert steer_score(fields) == pytest.approx(steer)
    assert explain(fields).startswith("steer")


def test_sweep_with_readback_stores_it_and_top_ranks_by_steer(reference_story, small_steerer, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    ref = reference_story
    out = tmp_path / "sw"
    kw = dict(features="0:12", values=[20, -10], batch_size=8, reference_text=ref, fluency=True)
    results = Sweep(small_steerer, out=out, readback=True, **kw).results()
    plain = Sweep(small_steerer, **kw).results()
    # The measure adds fields and changes nothing else.
    for a, b in zip(results, plain):
        ra, rb = a.to_record(), b.to_record()
        assert {k: v for k, v in ra.items() if not k.startswith("readback")} == rb
        assert "readback_ids" in ra and "readback_ids" not in rb
    recs = st.load_records(out)
    lm = small_steerer.lm
    vec = readback_vectors(lm.model, small_steerer.sae, small_steerer.hook_name, small_steerer.tokens(None), [recs[3]["tokens"]],
                           pad_token_id=lm.pad_token_id)[0]
    assert recs[3]["readback_ids"] == sparse(vec)[0]
    rows = top(out, n=None)
    assert [r.steer for r in rows] == sorted((r.steer for r in rows), reverse=True)
    measured = [r for r in rows if r.readback_rank is not None]
    assert measured and all(0 <= r.readback_rank <= 1 for r in measured)
    # the firing words are ranked against the same null, from the folder's facts
    worded = [r for r in rows if r.word_rank is not None]
    assert worded and all(0 <= r.word_rank <= 1 for r in worded)
    assert {r.feature for r in worded} == {r.feature for r in measured}
    assert run(["top", str(out), "--explain", str(rows[0].feature)]) == 0
    explained = capsys.readouterr().out.splitlines()[1]
    assert "; rank " in explained.split("internal")[0] and "unsteered" in explained.split("loops")[1]
    recs, _ = annotate_folder(out)
    assert f"weight {recs[0]['word_weight']:.2f}] + internal" in explained
    assert run(["top", str(out), "--n", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"weights in steer: words {recs[0]['word_weight']:.2f} (" in printed
    passes = measure_passes(recs)
    assert f"readback {recs[0]['readback_weight']:.2f} ({passes['readback'][0]} texts in the top 5%, " \
           f"{passes['readback'][1]:.1f} by chance)" in printed
    assert run(["top", str(out), "--sort", "readback", "--n", "3"]) == 0
    assert run(["top", str(out), "--sort", "words", "--n", "3"]) == 0
    with pytest.raises(SaesteerError, match="readback"):  # another sweep identity: readback is part of it
        Sweep(small_steerer, out=out, **kw).results()
