"""The per-feature strength search: the points it returns are checked, and bisection narrows them."""

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import feature_facts
from saesteer.evaluation.strength import strength_search
from saesteer.evaluation.text_metrics import mean_logprob

pytestmark = pytest.mark.usefixtures("one_thread")



def test_strengths_change_the_text_and_stay_fluent(reference_story, small_steerer, tmp_path):
    ref = reference_story
    facts = feature_facts(small_steerer, reference_text=ref, cache_dir=tmp_path / "c")
    features = list(range(12))
    found = strength_search(small_steerer, features, facts, max_new_tokens=8, lo=0.25, hi=64.0, steps=3)
    assert [s.feature for s in found] == features
    base = small_steerer.generate(None, max_new_tokens=8)
    lm = small_steerer.lm
    base_flu = mean_logprob(lm.model, base.prompt_tokens, [base.tokens], pad_token_id=lm.pad_token_id)[0]
    changed = [s for s in found if s.change is not None]
    assert changed, "some feature changes the text within 0.25 .. 64 x its max activation"
    for s in found:
        if s.max_activation == 0:
            assert s.change is None and s.fluent is None and s.best is None
            continue
        if s.change is not None:
            assert 0.25 <= s.change <= 64.0
            g = small_steerer.generate(None, clamps={s.feature: s.change * s.max_activation}, max_new_tokens=8)
            assert list(g.tokens) != list(base.tokens)
        if s.fluent is not None:
            assert s.change is not None and s.change <= s.fluent <= 64.0
            g = small_steerer.generate(None, clamps={s.feature: s.fluent * s.max_activation}, max_new_tokens=8)
            flu = mean_logprob(lm.model, g.prompt_tokens, [g.tokens], pad_token_id=lm.pad_token_id)[0]
            assert base_flu - flu <= 1.0 or list(g.tokens) == list(base.tokens)
            assert s.best == s.fluent
    with pytest.raises(SaesteerError):
        strength_search(small_steerer, [0], facts, lo=2.0, hi=1.0)


def test_sweep_with_auto_strength_clamps_each_feature_at_its_best(reference_story, small_steerer, tmp_path):
    from saesteer.evaluation.strength import best_scales
    from saesteer.sweep import Sweep, top

    ref = reference_story
    out = tmp_path / "sw"
    kw = dict(features="0:6", values=[1.0, 0.5], max_new_tokens=8, fluency=True, reference_text=ref,
              cache_dir=str(tmp_path / "c"))
    sw = Sweep(small_steerer, out=out, auto_strength=True, **kw)
    results = sw.results()
    scales = best_scales(small_steerer, range(6), sw.facts, max_new_tokens=8)
    assert [(r.feature, r.value) for r in results] == [(f, v) for f in range(6) for v in (1.0, 0.5)]
    for r in results:
        assert r.clamp == pytest.approx(r.value * scales[r.feature], rel=1e-5)
        g = small_steerer.generate(None, clamps={r.feature: r.clamp}, max_new_tokens=8)
        assert list(g.tokens) == r.tokens
    rows = top(out, n=3)
    assert len(rows) == 3
    with pytest.raises(SaesteerError):  # another identity than the same sweep without it
        Sweep(small_steerer, out=out, **kw).results()
