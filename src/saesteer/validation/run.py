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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import compute_facts
from saesteer.evaluation.reference import sample_reference
from saesteer.models.loading import load_model
from saesteer.saes import load_sae, save_sae
from saesteer.steerer import Steerer
from saesteer.sweep.rank import annotate
from saesteer.sweep.runner import Sweep
from saesteer.training import sample_activations, train_topk_sae
from saesteer.validation.criterion import (N_BEST, clearest, no_fluency_score, result_dict, shown,
                                          top_hits)
from saesteer.validation.measures import base_clean, cross_top, model_opening, null_groups
from saesteer.validation.nulls import null_counts
from saesteer.validation.page import write_outputs



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

    def check(self) -> None:
        if self.latents < 1 or not 0 < self.k <= self.latents:
            raise SaesteerError(f"need latents >= 1 and 0 < k <= latents, got latents={self.latents}, k={self.k}")
        if not self.values and not self.relative_values:
            raise SaesteerError("give at least one absolute or relative clamp value")
        if self.max_new_tokens < 1 or self.tokens < 2 or self.reference_samples < 1 or self.reference_length < 1:
            raise SaesteerError("max_new_tokens, tokens, reference_samples and reference_length must be positive")
        if not self.reference_temperature > 0:
            raise SaesteerError(f"reference_temperature must be above 0, got {self.reference_temperature}")
        if self.opening_words < 1 or self.permutations < 0:
            raise SaesteerError("opening_words must be >= 1 and permutations >= 0")


# --------------------------------------------------------------------------- results
@dataclass
class PromptOutcome:
    """The sweep from one prompt."""

    label: str
    """``bos`` or ``prompt``."""
    prompt: str | None
    baseline: str
    baseline_fluency: float | None
    clear: list[int]
    """Features that steer clearly from this prompt."""
    chance: float
    """The clear count chance gives: the mean of its permutation null (``validation.nulls``)."""
    top20_score_hits: int
    top20_score_hits_no_fluency: int


@dataclass
class FeatureOutcome:
    """One feature of the report: what it fires on and its clearest (else best-scoring) text per prompt."""

    feature: int
    firing_words: list[str]
    max_activation: float
    clear_on: list[str]
    passes_both_on: list[str]
    """Prompts from which one of its texts passes both tests."""
    score: float
    """Its best score from each prompt, summed."""
    texts: dict[str, dict] = field(default_factory=dict)
    """Per prompt label: value, relative, clamp, text, fire_hits, fluency_drop, score, clear."""


@dataclass
class Validation:
    """What :func:`validate` measured; :meth:`report` is ``report.json``."""

    model: str
    hook: str
    variance_explained: float
    l0: float
    dead_fraction: float
    n_features: int
    clear_bos: int
    clear_prompt: int
    clear_both: int
    top20_score_hits: int
    """Of the 20 features with the highest score (best over both prompts), how many steer clearly on some prompt."""
    top20_score_hits_no_fluency: int
    """The same ranking by the score a sweep without ``--fluency`` gives."""
    chance_bos: float
    chance_prompt: float
    chance_both: float
    """Clear counts chance gives (means of the permutation nulls; ``both``: clear from both prompts)."""
    prompts: list[PromptOutcome]
    best: list[FeatureOutcome]
    config: dict
    timings: dict
    machine: dict
    training: dict = field(default_factory=dict)
    nulls: dict = field(default_factory=dict)
    """Per prompt label and ``every_prompt``, per test (``words``, ``readback``, ``both``): observed count,
    chance, 95% interval of the null, permutation p-value, net of chance, features (``validation.nulls``)."""
    cross: dict = field(default_factory=dict)
    """Per prompt label: the top 20 by each measure, measured by the other (``validation.measures``)."""
    passes_both: list[int] = field(default_factory=list)
    """Features with one text that passes both tests (firing words and readback) from some prompt."""

    def report(self) -> dict:
        d = asdict(self)
        d["clear_features"] = {p.label: p.clear for p in self.prompts}
        return d


# --------------------------------------------------------------------------- steps
def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg_1min": load[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__}


def _middle_hook(model) -> str:
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if not layers:
        raise SaesteerError("cannot tell how many layers the model has; pass a hook such as blocks.2.hook_resid_post")
    return f"blocks.{layers // 2}.hook_resid_post"


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


def _outcome(label: str, prompt: str | None, by_feature: dict, baseline, chance: float) -> PromptOutcome:
    """Clear features, chance (the permutation null's mean) and top-20 hits of one prompt's sweep."""
    clear = sorted(f for f, rs in by_feature.items() if clearest(r for _, r in rs) is not None)
    flu = {f: max(r.metrics.score for _, r in rs) for f, rs in by_feature.items()}
    nof = {f: max(no_fluency_score(r.metrics) for _, r in rs) for f, rs in by_feature.items()}
    return PromptOutcome(label, prompt, baseline.text, baseline.fluency, clear, chance, top_hits(flu, set(clear)),
                         top_hits(nof, set(clear)))


def _best_features(per_prompt: dict, clear_sets: dict, facts, both_sets: dict,
                   n: int = N_BEST) -> list[FeatureOutcome]:
    """The ``n`` features to show: passing both tests first, then clear on both prompts, then on one; then by
    summed score, firing-word occurrences of their clear texts (up to 4 each) and fluency."""
    passing = set().union(*both_sets.values())
    clear_any = set().union(*clear_sets.values())
    both = set.intersection(*clear_sets.values())
    features = range(len(next(iter(per_prompt.values()))))
    summed = {f: sum(max(r.metrics.score for _, r in per_prompt[lbl][f]) for lbl in per_prompt) for f in features}

    def rank(f: int):
        picked = [c for c in (clearest(r for _, r in per_prompt[lbl][f]) for lbl in per_prompt) if c is not None]
        hits_ = sum(min(c.metrics.fire_hits, 4) for c in picked)
        drop = sum(c.metrics.fluency_drop for c in picked)
        return -(f in passing), -(f in both), -(f in clear_any), -summed[f], -hits_, drop, f

    best = []
    for f in sorted(features, key=rank)[:n]:
        ff = facts[f]
        texts = {lbl: result_dict(*shown(per_prompt[lbl][f])) for lbl in per_prompt}
        best.append(FeatureOutcome(f, list(ff.firing_words), round(ff.max_activation, 4),
                                   [lbl for lbl in per_prompt if f in clear_sets[lbl]],
                                   [lbl for lbl in per_prompt if f in both_sets[lbl]], round(summed[f], 4), texts))
    return best


def _best_score(per_prompt: dict, f: int, fn) -> float:
    return max(fn(r.metrics) for lbl in per_prompt for _, r in per_prompt[lbl][f])


def validate(config: ValidationConfig | None = None, *, out: str | os.PathLike | None = None, progress: bool = True,
             **overrides) -> Validation:
    """Run the validation (see the module docstring); keywords override ``config``'s fields."""
    cfg = config or ValidationConfig()
    if overrides:
        unknown = set(overrides) - set(ValidationConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown validation settings: {sorted(unknown)}")
        cfg = ValidationConfig(**{**asdict(cfg), **overrides})
    cfg.check()
    if not Path(cfg.model).expanduser().is_dir():
        raise SaesteerError(f"model directory {cfg.model} not found; pass a local Hugging Face model directory")
    out_dir = Path(out) if out is not None else None
    machine = _machine()
    t: dict[str, float] = {}
    start = time.perf_counter()

    lm = load_model(str(cfg.model))
    hook = cfg.hook or _middle_hook(lm.model)
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

    st = Steerer(lm, sae, hook=hook)
    n_features = min(cfg.features or sae.d_sae, sae.d_sae)
    opening = cfg.prompt if cfg.prompt is not None else model_opening(lm, cfg.opening_words)
    _say(progress, f"[3/4] sweeping {n_features} features x {len(cfg.values) + len(cfg.relative_values)} values "
                   f"from BOS and from {opening!r}, {cfg.max_new_tokens} tokens each, readback measured")
    t3 = time.perf_counter()
    per_prompt, baselines, annotated, null_in = {}, {}, {}, {}
    for label, prompt in (("bos", None), ("prompt", opening)):
        per_prompt[label], baselines[label], sweeps = _sweep_prompt(st, facts, cfg, prompt, n_features, progress)
        annotated[label] = [annotate([r.to_record() for r in results]) for results in sweeps]
        null_in[label] = (null_groups(annotated[label], facts, n_features),
                          base_clean(baselines[label], facts, n_features))
    t["sweep_s"] = time.perf_counter() - t3

    _say(progress, f"[4/4] permutation nulls ({cfg.permutations} permutations) and report")
    nulls = null_counts(null_in, permutations=cfg.permutations, seed=cfg.seed)
    cross = {label: cross_top(annotated[label]) for label in annotated}
    outcomes = [_outcome(label, prompt, per_prompt[label], baselines[label], nulls[label]["words"]["chance"])
                for label, prompt in (("bos", None), ("prompt", opening))]
    for o in outcomes:
        n = nulls[o.label]
        _say(progress, "      " + o.label + ": " + "; ".join(
            f"{test} {n[test]['observed']} (chance {n[test]['chance']:.1f}, p {n[test]['p']:.3g})" for test in n))
    clear_sets = {o.label: set(o.clear) for o in outcomes}
    clear_any = clear_sets["bos"] | clear_sets["prompt"]
    both_sets = {label: set(nulls[label]["both"]["features"]) for label in per_prompt}
    best_flu = {f: _best_score(per_prompt, f, lambda m: m.score) for f in range(n_features)}
    best_nof = {f: _best_score(per_prompt, f, no_fluency_score) for f in range(n_features)}
    best = _best_features(per_prompt, clear_sets, facts, both_sets)
    t["total_s"] = time.perf_counter() - start
    result = Validation(
        model=lm.name, hook=hook, variance_explained=stats.variance_explained, l0=stats.l0,
        dead_fraction=stats.dead_fraction, n_features=n_features, clear_bos=len(clear_sets["bos"]),
        clear_prompt=len(clear_sets["prompt"]), clear_both=len(clear_sets["bos"] & clear_sets["prompt"]),
        top20_score_hits=top_hits(best_flu, clear_any), top20_score_hits_no_fluency=top_hits(best_nof, clear_any),
        chance_bos=outcomes[0].chance, chance_prompt=outcomes[1].chance,
        chance_both=nulls["every_prompt"]["words"]["chance"], prompts=outcomes,
        best=best, config={**asdict(cfg), "hook": hook}, timings={k: round(v, 1) for k, v in t.items()},
        machine={**machine, "load_avg_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        training={"steps": stats.steps, "tokens": stats.tokens, "eval_tokens": stats.eval_tokens,
                  "eval": "held-out" if cfg.eval_tokens else "training tokens", "reference": reference.description},
        nulls=nulls, cross=cross, passes_both=sorted(set().union(*both_sets.values())),
    )
    if out_dir is not None:
        write_outputs(result, out_dir, per_prompt, facts)
    return result

