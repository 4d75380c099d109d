"""Validate the method on a real model: train an SAE, sweep every feature, count the features that steer, against
a permutation null.

:func:`validate` runs the whole check on a local Hugging Face directory (by default
the embedded ``stories260K``, the same model as ``../shared/models/stories260K-hf``):

1. sample ``tokens`` activations at a middle layer from text the model samples itself, and train a TopK SAE
   on them (``saesteer.training``); variance explained, L0 and dead latents are measured on held-out samples;
2. compute the feature facts (firing words, maximum activations) on reference text the model samples
   (at ``reference_temperature``);
3. sweep every feature from BOS and from a prompt taken from the model itself (the opening words of its most
   likely text, unless ``prompt`` is given), at absolute values and at multiples of each feature's maximum
   activation, with fluency and the readback (``evaluation.readback``) measured;
4. count the features that pass each test (firing words, ``criterion.clearest``; readback in the top 5% of
   its null; both on one text) next to a permutation null (``validation.nulls``: the texts shuffled among the
   features, what the counts would be if steering had nothing to do with the clamped feature), and measure
   the top 20 by each ranking with the other measure (``validation.measures``).

The result is a :class:`Validation`; with ``out`` it also writes ``report.json``, ``report.html``,
``features.jsonl``, the SAE (SAELens folder) and its facts. See ``docs/validation.md`` for the numbers.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import compute_facts
from saesteer.evaluation.text_metrics import repetition
from saesteer.evaluation.reference import sample_reference
from saesteer.models.hook_sites import n_layers
from saesteer.models.loading import load_model
from saesteer.saes import load_sae, save_sae
from saesteer.steerer import Steerer
from saesteer.sweep.rank import annotate, weigh
from saesteer.sweep.runner import Sweep
from saesteer.training import sample_activations, train_topk_sae
from saesteer.validation.criterion import (N_BEST, WORD_RULE, WORD_RULES, clearest, no_fluency_score, result_dict, shown,
                                          top_hits)
from saesteer.validation.measures import expected_hits, measure_prompts, model_opening
from saesteer.validation.page import write_outputs
from saesteer.validation.results import FeatureOutcome, PromptOutcome, Validation
from saesteer.validation.stored import save_sweeps



DEFAULT_MODEL = "stories260K"
"""The embedded stories260K (``saesteer/assets``): found from any working directory, no ../shared needed."""
REPORT_KEYS = ("variance_explained", "l0", "dead_fraction", "n_features", "clear_bos", "clear_prompt", "clear_both",
               "top20_score_hits")


@dataclass
class ValidationConfig:
    """What :func:`validate` trains and sweeps; the defaults are the full-size run of ``docs/validation.md``."""

    model: str = DEFAULT_MODEL
    hook: str | None = None
    """Hook site; default ``blocks.{n_layers // 2}.hook_resid_post``."""
    latents: int = 1024
    k: int = 16
    tokens: int = 1_000_000
    """Self-sampled training tokens."""
    epochs: float = 2.0
    seq_len: int = 128
    eval_tokens: int = 65_536
    """Held-out self-sampled tokens for variance explained, L0 and dead latents."""
    seed: int = 0
    prompt: str | None = None
    """A prompt to sweep from; None: the opening words of the model's own most likely text (greedy from BOS),
    which assumes nothing about the model's domain. Every feature is also swept from BOS alone."""
    opening_words: int = 4
    """Words of the model's own opening taken as the prompt (when ``prompt`` is None)."""
    permutations: int = 999
    """Random permutations of the features in each null (the smallest p-value is 1 / (1 + permutations))."""
    values: tuple[float, ...] = (2.0, 3.0, 4.0)
    """Absolute clamp values."""
    relative_values: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    """Multiples of each feature's maximum activation on the reference text."""
    max_new_tokens: int = 64
    reference_samples: int = 1024
    reference_length: int = 64
    reference_temperature: float = 0.7
    features: int | None = None
    """Sweep only the first this many features (None: all)."""
    batch_size: int | None = None
    word_rule: str = WORD_RULE
    """What the firing-word test counts (``criterion.word_levels``): occurrences beyond the unsteered text's
    (``excess``, the default), beyond the larger of the unsteered text's and a typical text's (``expected``),
    or only where the unsteered text has none (``clean``, the earlier rule)."""

    def check(self) -> None:
        if self.latents < 1 or not 0 < self.k <= self.latents:
            raise SaesteerError(f"need latents >= 1 and 0 < k <= latents, got latents={self.latents}, k={self.k}")
        if not self.values and not self.relative_values:
            raise SaesteerError("give at least one absolute or relative clamp value")
        if self.max_new_tokens < 1 or self.tokens < 2 or self.reference_samples < 1 or self.reference_length < 1:
            raise SaesteerError("max_new_tokens, tokens, reference_samples and reference_length must be positive")
        if not self.reference_temperature > 0:
            raise SaesteerError(f"reference_temperature must be above 0, got {self.reference_temperature}")
        if self.word_rule not in WORD_RULES:
            raise SaesteerError(f"unknown word_rule {self.word_rule!r}; choose one of {', '.join(WORD_RULES)}")
        if self.opening_words < 1 or self.permutations < 0:
            raise SaesteerError("opening_words must be >= 1 and permutations >= 0")


# --------------------------------------------------------------------------- steps
def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg_1min": load[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__}


def _middle_hook(model) -> str:
    """The middle block's ``hook_resid_post`` (layers counted from the family's module table, so every config
    layout, GPT-Neo's ``num_layers`` and Gemma 3's text sub-config included, gives the same answer)."""
    return f"blocks.{n_layers(model) // 2}.hook_resid_post"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _train(lm, hook: str, cfg: ValidationConfig, progress: bool, t: dict):
    """Sample activations, train the SAE; the statistics are measured on held-out samples."""
    t0 = time.perf_counter()
    acts = sample_activations(lm, hook, cfg.tokens, seq_len=cfg.seq_len, seed=cfg.seed, progress=progress)
    t["sample_s"] = time.perf_counter() - t0
    held = sample_activations(lm, hook, cfg.eval_tokens, seq_len=cfg.seq_len, seed=cfg.seed + 1_000_003,
                              progress=False) if cfg.eval_tokens else None
    t1 = time.perf_counter()
    sae, stats = train_topk_sae(acts, d_sae=cfg.latents, k=cfg.k, epochs=cfg.epochs, seed=cfg.seed, hook_name=hook,
                                eval_acts=held, progress=progress)
    t["train_s"] = time.perf_counter() - t1
    sae.cfg.extra["model_name"] = lm.name
    return sae, stats


def _sweep_prompt(st, facts, cfg: ValidationConfig, prompt: str | None, n_features: int, progress: bool):
    """Every feature at every value from ``prompt``, readback measured: ``({feature: [(relative, SweepResult),
    ...]}, baseline, [results of each sweep])``."""
    by_feature: dict[int, list] = {f: [] for f in range(n_features)}
    baseline, sweeps = None, []
    for rel, values in ((False, cfg.values), (True, cfg.relative_values)):
        if not values:
            continue
        sw = Sweep(st, features=f"0:{n_features}", values=list(values), relative=rel, prompt=prompt,
                   max_new_tokens=cfg.max_new_tokens, fluency=True, facts=facts, batch_size=cfg.batch_size,
                   progress=progress, readback=True)
        results = sw.results()
        for r in results:
            by_feature[r.feature].append((rel, r))
        sweeps.append(results)
        baseline = sw.baseline
    return by_feature, baseline, sweeps


def _outcome(label: str, prompt: str | None, by_feature: dict, baseline, chance: float,
             levels: list[float]) -> PromptOutcome:
    """Clear features, chance (the permutation null's mean) and top-20 hits of one prompt's sweep."""
    clear = sorted(f for f, rs in by_feature.items() if clearest((r for _, r in rs), levels[f]) is not None)
    flu = {f: max(r.metrics.score for _, r in rs) for f, rs in by_feature.items()}
    nof = {f: max(no_fluency_score(r.metrics) for _, r in rs) for f, rs in by_feature.items()}
    return PromptOutcome(label, prompt, baseline.text, baseline.fluency, clear, chance, top_hits(flu, set(clear)),
                         top_hits(nof, set(clear)))


def _best_features(per_prompt: dict, clear_sets: dict, facts, both_sets: dict, levels: dict,
                   n: int = N_BEST) -> list[FeatureOutcome]:
    """The ``n`` features to show: passing both tests first, then clear on both prompts, then on one; then by
    summed score, firing-word occurrences of their clear texts (up to 4 each) and fluency."""
    passing = set().union(*both_sets.values())
    clear_any = set().union(*clear_sets.values())
    both = set.intersection(*clear_sets.values())
    features = range(len(next(iter(per_prompt.values()))))
    summed = {f: sum(max(r.metrics.score for _, r in per_prompt[lbl][f]) for lbl in per_prompt) for f in features}

    def rank(f: int):
        picked = [c for c in (clearest((r for _, r in per_prompt[lbl][f]), levels[lbl][f]) for lbl in per_prompt)
                  if c is not None]
        hits_ = sum(min(c.metrics.fire_hits, 4) for c in picked)
        drop = sum(c.metrics.fluency_drop for c in picked)
        return -(f in passing), -(f in both), -(f in clear_any), -summed[f], -hits_, drop, f

    best = []
    for f in sorted(features, key=rank)[:n]:
        ff = facts[f]
        texts = {lbl: result_dict(*shown(per_prompt[lbl][f], levels[lbl][f]), levels[lbl][f]) for lbl in per_prompt}
        best.append(FeatureOutcome(f, list(ff.firing_words), round(ff.max_activation, 4),
                                   [lbl for lbl in per_prompt if f in clear_sets[lbl]],
                                   [lbl for lbl in per_prompt if f in both_sets[lbl]], round(summed[f], 4), texts))
    return best


def _best_score(per_prompt: dict, f: int, fn) -> float:
    return max(fn(r.metrics) for lbl in per_prompt for _, r in per_prompt[lbl][f])


def _settings(config: ValidationConfig | None, overrides: dict) -> ValidationConfig:
    """``config`` with ``overrides`` applied and checked; the model directory must exist."""
    cfg = config or ValidationConfig()
    if overrides:
        unknown = set(overrides) - set(ValidationConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown validation settings: {sorted(unknown)}")
        cfg = ValidationConfig(**{**asdict(cfg), **overrides})
    cfg.check()
    if not Path(cfg.model).expanduser().is_dir():
        raise SaesteerError(f"model directory {cfg.model} not found; pass a local Hugging Face model directory")
    return cfg


def fit_context(cfg: ValidationConfig, max_positions: int | None) -> ValidationConfig:
    """``cfg`` with the sampled sequences shortened to fit a model's context (the sweep's own prompt and new
    tokens are checked where they are generated); unchanged when they fit or the context is unknown."""
    if not max_positions:
        return cfg
    if max_positions < 8:
        raise SaesteerError(f"the model has only {max_positions} positions; validate needs at least 8")
    return replace(cfg, seq_len=min(cfg.seq_len, max_positions),
                   reference_length=min(cfg.reference_length, max_positions - 1))


def _train_and_facts(lm, hook: str, cfg: ValidationConfig, out_dir: Path | None, progress: bool, t: dict):
    """Steps 1 and 2: the SAE (saved and loaded back when there is an ``out_dir``), its stats, the reference
    text and the feature facts on it."""
    _say(progress, f"[1/4] training a TopK SAE ({cfg.latents} latents, k={cfg.k}) at {hook} on {cfg.tokens:,} "
                   "self-sampled tokens")
    sae, stats = _train(lm, hook, cfg, progress, t)
    if out_dir is not None:  # steer with the SAE as saved and loaded back, as a user would
        sae = load_sae(str(save_sae(sae, out_dir / "sae")))
    _say(progress, f"      variance explained {stats.variance_explained:.4f}, L0 {stats.l0:.2f}, dead "
                   f"{100 * stats.dead_fraction:.2f}% ({t['sample_s']:.0f}s sampling, {t['train_s']:.0f}s training)")
    _say(progress, f"[2/4] feature facts on {cfg.reference_samples} x {cfg.reference_length} tokens sampled at "
                   f"temperature {cfg.reference_temperature}")
    t2 = time.perf_counter()
    reference = sample_reference(lm, samples=cfg.reference_samples, length=cfg.reference_length,
                                 temperature=cfg.reference_temperature, seed=cfg.seed)
    facts = compute_facts(lm, sae, hook, reference, progress=progress)
    if out_dir is not None:
        facts.save(out_dir / "facts")
    t["facts_s"] = time.perf_counter() - t2
    return sae, stats, reference, facts


def _sweep_all(st, facts, cfg: ValidationConfig, opening: str, n_features: int, progress: bool, t: dict):
    """Step 3: every feature from BOS and from ``opening``; per prompt label, the results by feature, the
    baseline and the annotated records (word and readback ranks and ``steer`` added)."""
    _say(progress, f"[3/4] sweeping {n_features} features x {len(cfg.values) + len(cfg.relative_values)} values "
                   f"from BOS and from {opening!r}, {cfg.max_new_tokens} tokens each, readback measured")
    t3 = time.perf_counter()
    per_prompt, baselines, annotated = {}, {}, {}
    for label, prompt in (("bos", None), ("prompt", opening)):
        per_prompt[label], baselines[label], sweeps = _sweep_prompt(st, facts, cfg, prompt, n_features, progress)
        base_rep = repetition(baselines[label].tokens)
        annotated[label] = [annotate([r.to_record() for r in results], facts.words, base_repetition=base_rep)
                            for results in sweeps]
        weigh([r for recs in annotated[label] for r in recs])
    t["sweep_s"] = time.perf_counter() - t3
    return per_prompt, baselines, annotated


def _measure(per_prompt, baselines, annotated, facts, expected, cfg: ValidationConfig, opening: str,
             n_features: int, progress: bool):
    """Step 4: the permutation nulls, each ranking's top 20 measured by the other, and the prompts' outcomes."""
    _say(progress, f"[4/4] permutation nulls ({cfg.permutations} permutations) and report")
    nulls, cross, levels = measure_prompts(annotated, {lbl: b.text for lbl, b in baselines.items()}, facts,
                                           expected, n_features, word_rule=cfg.word_rule,
                                           permutations=cfg.permutations, seed=cfg.seed)
    outcomes = [_outcome(label, prompt, per_prompt[label], baselines[label], nulls[label]["words"]["chance"],
                         levels[label]) for label, prompt in (("bos", None), ("prompt", opening))]
    for o in outcomes:
        n = nulls[o.label]
        _say(progress, "      " + o.label + ": " + "; ".join(
            f"{test} {n[test]['observed']} (chance {n[test]['chance']:.1f}, p {n[test]['p']:.3g})" for test in n))
    return nulls, cross, outcomes, levels


def _result(lm, hook, cfg, stats, reference, facts, per_prompt, measured, n_features, machine, t,
            start) -> Validation:
    """The :class:`Validation` from every step's output (``measured``: what :func:`_measure` returns)."""
    nulls, cross, outcomes, levels = measured
    clear_sets = {o.label: set(o.clear) for o in outcomes}
    clear_any = clear_sets["bos"] | clear_sets["prompt"]
    both_sets = {label: set(nulls[label]["both"]["features"]) for label in per_prompt}
    best_flu = {f: _best_score(per_prompt, f, lambda m: m.score) for f in range(n_features)}
    best_nof = {f: _best_score(per_prompt, f, no_fluency_score) for f in range(n_features)}
    t["total_s"] = time.perf_counter() - start
    return Validation(
        model=lm.name, hook=hook, variance_explained=stats.variance_explained, l0=stats.l0,
        dead_fraction=stats.dead_fraction, n_features=n_features, clear_bos=len(clear_sets["bos"]),
        clear_prompt=len(clear_sets["prompt"]), clear_both=len(clear_sets["bos"] & clear_sets["prompt"]),
        top20_score_hits=top_hits(best_flu, clear_any), top20_score_hits_no_fluency=top_hits(best_nof, clear_any),
        chance_bos=outcomes[0].chance, chance_prompt=outcomes[1].chance,
        chance_both=nulls["every_prompt"]["words"]["chance"], prompts=outcomes,
        best=_best_features(per_prompt, clear_sets, facts, both_sets, levels), config={**asdict(cfg), "hook": hook},
        timings={k: round(v, 1) for k, v in t.items()},
        machine={**machine, "load_avg_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        training={"steps": stats.steps, "tokens": stats.tokens, "eval_tokens": stats.eval_tokens,
                  "eval": "held-out" if cfg.eval_tokens else "training tokens", "reference": reference.description},
        nulls=nulls, cross=cross, passes_both=sorted(set().union(*both_sets.values())),
    )


def validate(config: ValidationConfig | None = None, *, out: str | os.PathLike | None = None, progress: bool = True,
             **overrides) -> Validation:
    """Run the validation (see the module docstring); keywords override ``config``'s fields."""
    cfg = _settings(config, overrides)
    out_dir = Path(out) if out is not None else None
    machine, t, start = _machine(), {}, time.perf_counter()
    lm = load_model(str(cfg.model))
    if lm.tokenizer is None:  # firing words, prompts and texts are all text: say so before any work
        raise SaesteerError(f"validate reads the model's text, but {cfg.model} has no tokenizer (no tokenizer files"
                            " beside config.json); save the model's tokenizer there (tokenizer.save_pretrained)")
    cfg = fit_context(cfg, lm.max_positions)
    hook = cfg.hook or _middle_hook(lm.model)
    sae, stats, reference, facts = _train_and_facts(lm, hook, cfg, out_dir, progress, t)
    st = Steerer(lm, sae, hook=hook)
    n_features = min(cfg.features or sae.d_sae, sae.d_sae)
    opening = cfg.prompt if cfg.prompt is not None else model_opening(lm, cfg.opening_words, reference)
    per_prompt, baselines, annotated = _sweep_all(st, facts, cfg, opening, n_features, progress, t)
    expected = expected_hits(lm, reference, facts, n_features, cfg.max_new_tokens)
    measured = _measure(per_prompt, baselines, annotated, facts, expected, cfg, opening, n_features, progress)
    result = _result(lm, hook, cfg, stats, reference, facts, per_prompt, measured, n_features, machine, t, start)
    if out_dir is not None:
        write_outputs(result, out_dir, per_prompt, facts, measured[3])
        save_sweeps(out_dir, annotated, baselines, expected)
    return result
