"""Steered against unsteered continuations of the user's own prompts, with metrics per setting.

The practical session's last step: take a feature (say one that makes text sad), continue a sentence with
and without it clamped, sweep the clamp strength, and tell an effect from chance.

* A **setting** is one set of clamps. With ``values``, setting ``v`` clamps every feature named in
  ``clamps`` to ``v`` (value 0 clamps the feature *to 0*, which in ``delta`` mode removes it; it is not
  "no clamp"). The **unsteered baseline** is a separate setting with no hooks at all.
* Each setting is generated with exactly the arguments ``Steerer.generate_many`` takes, one call per prompt
  and setting, so a one-sample ``compare`` gives the same tokens as ``Steerer.generate`` (and
  ``saesteer generate``) for the same clamp. With ``samples = N`` (temperature > 0), sample ``i`` of every
  setting is row ``i`` of ``generate_many([prompt] * N, seed=seed)``: it draws from the same seeded random
  stream in every setting, the baseline included (common random numbers). Where steering has no effect,
  sample ``i`` is then *identical* to the baseline's sample ``i``, so differences are the clamp's doing.

Metrics of each continuation (``Continuation``):

* ``kl``: at generated position ``t``, ``KL(p_steered(. | x_<t) || p_unsteered(. | x_<t))`` in nats, where
  ``x`` is the prompt followed by the *steered* continuation, and both distributions are the model's raw
  next-token distributions (temperature 1, no top-p) teacher-forced along that text, one with the clamps
  hooked in and one without hooks. This direction is "how far did steering move the distribution": the
  expectation is under the distribution that actually wrote the text (the steered one), so ``kl[t]`` is
  the expected log-likelihood ratio, per token, by which the unsteered model finds steered choices
  surprising. It is 0 exactly when the clamps leave the logits unchanged (e.g. no clamps in ``delta``
  mode), and 0 for the baseline by definition. ``kl_mean`` is its mean over the generated positions.
* ``hits_words`` / ``hits_lens`` / ``hits_tokens``: on-target hits (``text_metrics.hits``): occurrences of
  the clamped features' firing words, of the tokens their decoder directions promote (logit lens), and of
  their firing tokens, from ``feature_facts``. The baseline's counts are the row to compare against.
* ``fluency``: mean log-probability (nats/token) of the continuation under the unsteered model
  (``text_metrics.mean_logprob``); ``fluency_drop``: the paired baseline sample's fluency minus this one.
* ``repetition`` (share of repeated bigrams), ``distinct`` (distinct/total tokens), ``score``
  (``text_metrics.score``, against the paired baseline sample).

Per setting, ``summary[metric]`` is the mean, standard deviation and standard error over samples, and
``p_values[metric]`` (with at least two samples) a two-sided paired sign-flip test of the mean
difference from the baseline's paired samples (exact up to 14 samples): the chance of a mean difference at
least this large if steering had no effect. It is the "is it the feature or chance?" column of the report.
With ``n`` samples the smallest possible p is ``2 / 2^n``: p < 0.05 needs at least 6 samples.

>>> cmp = compare(steerer, ["I feel"], 123, values=[-20, 0, 20], samples=4, temperature=1)  # doctest: +SKIP
>>> cmp                     # a table and a plot in a notebook (``_repr_html_``)              # doctest: +SKIP
>>> cmp.save_html("report.html"); cmp.to_dict()                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.compare_config import CompareConfig, parse_clamp_values
from saesteer.evaluation.comparison import Comparison, Continuation, PromptComparison, Setting
from saesteer.evaluation.feature_card import feature_card
from saesteer.evaluation.feature_facts import feature_facts
from saesteer.evaluation.stats import METRIC_LABELS, METRICS, TESTED, Stat, paired_sign_flip_p
from saesteer.evaluation.teacher_forced import next_token_kl
from saesteer.evaluation.text_metrics import Targets, mean_logprob, text_metrics
from saesteer.evaluation.token_text import token_pieces
from saesteer.steering.clamp import FeatureClamp
from saesteer.steering.values import check_value
from saesteer.strength import relative_settings
from saesteer.sweep import store as sweep_store
from saesteer.sweep.rank import top

__all__ = ["CompareConfig", "Comparison", "Continuation", "METRICS", "METRIC_LABELS", "PromptComparison", "Setting",
           "Stat", "TESTED", "compare", "next_token_kl", "paired_sign_flip_p", "parse_clamp_values", "parse_feature_or_clamp",
           "token_pieces"]


# --------------------------------------------------------------------------- parsing helpers
def parse_feature_or_clamp(text: str) -> tuple[int, float | None]:
    """``"123=20"`` -> (123, 20.0); ``"123"`` -> (123, None) (a value then comes from ``--values``)."""
    feature, sep, value = str(text).partition("=")
    try:
        f = int(feature)
        v = float(value) if sep else None
    except ValueError:
        raise SaesteerError(f"bad clamp {text!r}; write FEATURE=VALUE (or FEATURE with --values)") from None
    return f, (None if v is None else check_value(v, f"clamp value for feature {f}"))


# --------------------------------------------------------------------------- compare
def _pairs(clamps) -> list[tuple[int, float | None]]:
    """``(feature, value or None)`` from ints, ``{f: v}``, ``(f, v)``, ``FeatureClamp``s, or lists of those."""
    if clamps is None:
        return []
    if isinstance(clamps, bool):
        raise SaesteerError(f"bad clamp {clamps!r}")
    if isinstance(clamps, int):
        return [(clamps, None)]
    if isinstance(clamps, FeatureClamp):
        return [(clamps.feature, clamps.value)]
    if isinstance(clamps, Mapping):
        return [(int(f), None if v is None else float(v)) for f, v in clamps.items()]
    if isinstance(clamps, tuple) and len(clamps) == 2 and isinstance(clamps[0], int) and not isinstance(
            clamps[1], (tuple, list, FeatureClamp)):
        return [(clamps[0], None if clamps[1] is None else float(clamps[1]))]
    return [p for item in clamps for p in _pairs(item)]


def _settings(clamps, values: Sequence[float] | None) -> list[tuple[str, float | None, list[FeatureClamp]]]:
    """``(label, value, clamps)`` per steered setting (see ``compare``)."""
    pairs = _pairs(clamps)
    if not pairs:
        raise SaesteerError("compare needs at least one clamp (CLI: --clamp FEATURE=VALUE)")
    features = list(dict.fromkeys(f for f, _ in pairs))
    if len(features) != len(pairs):
        raise SaesteerError("each feature may be clamped once per setting; use values= to sweep one feature")
    if values is None:
        missing = [f for f, v in pairs if v is None]
        if missing:
            raise SaesteerError(f"feature {missing[0]} has no clamp value; write FEATURE=VALUE or pass values"
                                " (CLI: --values -20,0,20)")
        base = [FeatureClamp(int(f), float(v)) for f, v in pairs]
        common = {c.value for c in base}
        value = base[0].value if len(common) == 1 else None
        return [(", ".join(f"{c.feature}={c.value:g}" for c in base), value, base)]
    if not values:
        raise SaesteerError("values is empty; give at least one clamp value")
    out = []
    for v in values:
        cl = [FeatureClamp(int(f), float(v)) for f in features]
        out.append((", ".join(f"{c.feature}={float(v):g}" for c in cl), float(v), cl))
    return out


def _targets_for(facts, features: Sequence[int]) -> Targets | None:
    """The union of the features' on-target sets (None without facts)."""
    if facts is None:
        return None
    words, tok, lens = set(), set(), set()
    for f in features:
        t = facts.targets(int(f))
        words |= t.words
        tok |= t.token_ids
        lens |= t.lens_ids
    return Targets(frozenset(words), frozenset(tok), frozenset(lens))


def _summarise(setting: Setting, baseline: Setting | None) -> None:
    for m in METRICS:
        setting.summary[m] = Stat.of([c.metric(m) for c in setting.continuations])
    setting.p_values = {}
    if baseline is None:
        return
    for m in TESTED:
        a = [c.metric(m) for c in setting.continuations]
        b = [c.metric(m) for c in baseline.continuations]
        setting.p_values[m] = paired_sign_flip_p(a, b) if None not in a and None not in b else None


def _measure(lm, i: int, gen, base, prompt_tokens, kl: list[float], fluency, base_fluency, targets) -> Continuation:
    """The metrics of continuation ``gen`` (sample ``i``) against ``base``, the baseline's sample ``i``."""
    tm = text_metrics(gen.tokens, gen.text, base.tokens, base.text, targets or Targets(), fluency=fluency,
                      baseline_fluency=base_fluency)
    have = targets is not None
    return Continuation(
        sample=i, tokens=list(gen.tokens), text=gen.text, pieces=token_pieces(lm, gen.tokens, prompt_tokens),
        kl=kl, kl_mean=sum(kl) / len(kl) if kl else 0.0, fluency=fluency, fluency_drop=tm.fluency_drop,
        repetition=tm.repetition, distinct=tm.distinct, hits_words=tm.fire_hits if have else None,
        hits_lens=tm.lens_hits if have else None, hits_tokens=tm.fire_token_hits if have else None,
        score=tm.score if have else None, differs=tm.differs)


def _compare_prompt(steerer, prompt, settings_spec, samples: int, targets, gen_kwargs) -> PromptComparison:
    """Generate the baseline and every setting for one prompt (one ``generate_many`` call each), then measure."""
    lm, sae, hook = steerer.lm, steerer.sae, steerer.hook_name
    batch = [prompt] * samples
    base_gens = steerer.generate_many(batch, **gen_kwargs)
    prompt_tokens = base_gens[0].prompt_tokens
    steered = [steerer.generate_many(batch, clamps=cl, **gen_kwargs) for _, _, cl in settings_spec]
    # KL along every steered continuation, in one set of teacher-forced passes; fluency of every text.
    flat = [(k, g) for k, gens in enumerate(steered) for g in gens]
    kls = next_token_kl(lm, sae, hook, prompt_tokens, [g.tokens for _, g in flat],
                        [settings_spec[k][2] for k, _ in flat], mode=gen_kwargs["mode"])
    fluency = mean_logprob(lm.model, prompt_tokens, [g.tokens for g in base_gens] + [g.tokens for _, g in flat],
                           pad_token_id=lm.pad_token_id)
    base_flu = fluency[:samples]

    baseline = Setting("unsteered", None, [], [
        _measure(lm, i, g, g, prompt_tokens, [0.0] * len(g.tokens), base_flu[i], base_flu[i], targets)
        for i, g in enumerate(base_gens)])
    _summarise(baseline, None)
    settings = []
    for k, (label, value, cl) in enumerate(settings_spec):
        j0 = k * samples  # this setting's first row in ``flat``
        conts = [_measure(lm, i, g, base_gens[i], prompt_tokens, kls[j0 + i], fluency[samples + j0 + i], base_flu[i],
                          targets) for i, g in enumerate(steered[k])]
        setting = Setting(label, value, cl, conts)
        _summarise(setting, baseline)
        settings.append(setting)
    return PromptComparison(prompt, list(prompt_tokens), baseline, settings)


def compare(steerer, prompts: str | None | Sequence[str | None], clamps, config: CompareConfig | None = None, *,
            facts=None, progress: bool = False, **settings) -> Comparison:
    """Continue each prompt unsteered and under each clamp setting, and measure every continuation.

    ``steerer``: a :class:`~saesteer.steerer.Steerer` with an SAE. ``prompts``: a prompt, or a list (None:
    BOS alone). ``clamps``: ``{feature: value}``, ``FeatureClamp``s, ``(feature, value)`` pairs; with
    ``values``, the features alone (``123`` or ``[123, 456]``) are enough, and every value ``v`` becomes one
    setting that clamps all of them to ``v`` (values given in ``clamps`` are then not used).
    ``samples``: continuations per setting (more than one needs ``temperature > 0``; sample ``i`` uses the
    same seeded stream in every setting). ``relative``: the values are multiples of each feature's max
    activation on the reference text.

    ``facts``: a ``FactsTable`` (``feature_facts``), None to get it from the cache or compute it (on
    ``reference_text``, or ``reference_samples`` x ``reference_length`` tokens the model samples), or False
    to skip on-target hits and feature cards (as ``use_facts=False``). The settings are a
    :class:`CompareConfig` (``config``) and/or its fields as keywords (generation keywords are those of
    ``Steerer.generate_many``).
    """
    c = CompareConfig.build(config, settings, caller="compare")
    sae = steerer.need_sae()
    hook = steerer.need_hook()
    prompts = _prompt_list(prompts)
    values = None if c.values is None else list(c.values)
    if c.relative:
        clamps, values, _ = relative_settings(steerer, _pairs(clamps), values, relative=True, progress=progress,
                                              **c.scale_keywords())
    settings_spec = _settings(clamps, values)
    features = sorted({cl.feature for cl in settings_spec[0][2]})
    for f in features:
        sae.check_feature(f)
    swept = sweep_results(c.sweep, features, hook) if c.sweep is not None else None
    facts = _facts_of(steerer, c, facts, progress)
    targets = _targets_for(facts, features)
    gen_kwargs = dict(mode=c.mode, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                      seed=c.seed, prepend_bos=c.prepend_bos)
    results = [_compare_prompt(steerer, prompt, settings_spec, c.samples, targets, gen_kwargs) for prompt in prompts]
    lm = steerer.lm
    target_info = None
    card_list = []
    if facts is not None:
        target_info = {
            "words": sorted(targets.words),
            "lens": [lm.decode([t]) for t in sorted(targets.lens_ids)],
            "firing": [lm.decode([t]) for t in sorted(targets.token_ids)],
        }
        if c.cards:
            card_list = [feature_card(steerer, f, values=(), facts=facts) for f in features]
    return Comparison(
        model=lm.name, sae=sae.cfg.source or "", hook=hook, mode=c.mode, features=features, values=values,
        samples=c.samples, temperature=c.temperature, top_p=c.top_p, seed=c.seed, max_new_tokens=c.max_new_tokens,
        prepend_bos=c.prepend_bos, prompts=results, targets=target_info, cards=card_list,
        reference=dict(facts.meta.get("reference", {})) if facts is not None else None,
        sweep=None if c.sweep is None else str(c.sweep), sweep_results=swept,
    )


def sweep_results(directory, features: Sequence[int], hook: str) -> list[dict]:
    """The features' results in a sweep folder as ``saesteer top --all-values`` ranks them (best first):
    ``feature``, ``value``, ``steer``, ``word_rank``, ``readback_rank``, ``score``, ``text``. A sweep at
    another hook is refused in one line."""
    swept_hook = ((sweep_store.read_manifest(directory) or {}).get("sweep") or {}).get("hook")
    if swept_hook is not None and swept_hook != hook:
        raise SaesteerError(f"the sweep in {directory} clamped features at {swept_hook}, not at {hook}; give a"
                            " sweep of the same SAE")
    wanted = set(features)
    return [{k: r.to_dict()[k] for k in ("feature", "value", "steer", "word_rank", "readback_rank", "score", "text")}
            for r in top(directory, n=None, all_values=True) if r.feature in wanted]


def _prompt_list(prompts) -> list[str | None]:
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SaesteerError("give at least one prompt")
    return prompts


def _facts_of(steerer, c: CompareConfig, facts, progress: bool):
    """The feature facts to measure with: ``facts`` when given, none when skipped, else the (cached) facts."""
    if facts is False or not c.use_facts:
        return None
    if facts is None:
        return feature_facts(steerer, **c.facts_keywords(), progress=progress, engine=steerer.engine)
    return facts
