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

import inspect
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.text_metrics import Targets, mean_logprob, text_metrics
from saesteer.steering.clamp import FeatureClamp, SAEClamp, as_clamps

METRICS = ("kl", "hits_words", "hits_lens", "hits_tokens", "fluency", "repetition", "distinct", "score")
"""Per-setting summaries, in display order."""
TESTED = ("hits_words", "hits_lens", "fluency", "repetition")
"""Metrics with a paired test against the baseline (KL of the baseline is 0 by definition)."""
METRIC_LABELS = {
    "kl": "mean KL (nats)",
    "hits_words": "firing-word hits",
    "hits_lens": "promoted-token hits",
    "hits_tokens": "firing-token hits",
    "fluency": "fluency (mean log p)",
    "repetition": "repetition",
    "distinct": "distinct tokens",
    "score": "score",
}
_EXACT_FLIPS = 14
"""Up to this many samples the sign-flip test enumerates every flip; beyond, 20 000 seeded random flips."""


# --------------------------------------------------------------------------- parsing helpers
def parse_values(text: str | None) -> list[float] | None:
    """``"-20,-10,0,10,20"`` -> ``[-20.0, -10.0, 0.0, 10.0, 20.0]``; None/"" -> None; one-line error otherwise."""
    if text is None or not str(text).strip():
        return None
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise SaesteerError(f"bad clamp value {part.strip()!r} in {text!r}; write numbers separated by"
                                " commas, e.g. --values -20,-10,0,10,20") from None
        if not math.isfinite(v):
            raise SaesteerError(f"clamp values must be finite, got {part.strip()!r}")
        out.append(v)
    return out


def parse_feature_or_clamp(text: str) -> tuple[int, float | None]:
    """``"123=20"`` -> (123, 20.0); ``"123"`` -> (123, None) (a value then comes from ``--values``)."""
    feature, sep, value = str(text).partition("=")
    try:
        f = int(feature)
        v = float(value) if sep else None
    except ValueError:
        raise SaesteerError(f"bad clamp {text!r}; write FEATURE=VALUE (or FEATURE with --values)") from None
    if v is not None and not math.isfinite(v):
        raise SaesteerError(f"clamp value for feature {f} must be finite, got {value}")
    return f, v


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """Mean, standard deviation (n - 1) and standard error of one metric over a setting's samples."""

    mean: float | None
    sd: float | None
    se: float | None
    n: int

    @staticmethod
    def of(values: Sequence[float | None]) -> "Stat":
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return Stat(None, None, None, 0)
        m = sum(xs) / len(xs)
        if len(xs) < 2:
            return Stat(m, None, None, len(xs))
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        return Stat(m, sd, sd / math.sqrt(len(xs)), len(xs))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "se": self.se, "n": self.n}


def paired_sign_flip_p(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> float | None:
    """Two-sided paired sign-flip (permutation) test of ``mean(a - b) == 0``.

    The share of the ``2^n`` ways of flipping the signs of the differences whose mean is at least as far from
    0 as the observed one (exact up to 14 pairs; beyond, 20 000 seeded random flips). None with fewer than two
    pairs. All differences 0 give 1.0. With ``n`` differences all of one sign and equal size the answer is
    ``2 / 2^n`` (the observed signs and their mirror image).
    """
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    d = [x - y for x, y in pairs]
    observed = abs(sum(d))
    tol = 1e-9 * max(1.0, observed)
    if len(d) <= _EXACT_FLIPS:
        total = hits = 0
        for signs in itertools.product((1, -1), repeat=len(d)):
            total += 1
            hits += abs(sum(s * x for s, x in zip(signs, d))) >= observed - tol
        return hits / total
    rng = random.Random(seed)
    draws = 20_000
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed - tol for _ in range(draws))
    return (hits + 1) / (draws + 1)


# --------------------------------------------------------------------------- data
@dataclass
class Continuation:
    """One generated continuation and its metrics (see the module docstring)."""

    sample: int
    tokens: list[int]
    text: str
    pieces: list[str]
    """The text each token adds after the prompt (``token_pieces``); ``text`` is the continuation decoded
    alone, exactly as ``Steerer.generate`` gives it."""
    kl: list[float]
    """``KL(p_steered || p_unsteered)`` at each generated position, nats."""
    kl_mean: float
    fluency: float | None
    fluency_drop: float | None
    repetition: float
    distinct: float
    hits_words: int | None = None
    hits_lens: int | None = None
    hits_tokens: int | None = None
    score: float | None = None
    differs: bool = False
    """Whether the tokens differ from the paired baseline sample's."""

    def metric(self, name: str):
        return self.kl_mean if name == "kl" else getattr(self, name)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Setting:
    """One clamp setting (or the unsteered baseline) for one prompt: its continuations and summaries."""

    label: str
    value: float | None
    """The sweep value (``values``), or the clamps' common value; None for the baseline (or mixed values)."""
    clamps: list[FeatureClamp]
    continuations: list[Continuation]
    summary: dict[str, Stat] = field(default_factory=dict)
    p_values: dict[str, float | None] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return not self.clamps

    def to_dict(self) -> dict:
        return {
            "label": self.label, "value": self.value, "clamps": [c.to_dict() for c in self.clamps],
            "summary": {k: v.to_dict() for k, v in self.summary.items()},
            "p_values": dict(self.p_values),
            "continuations": [c.to_dict() for c in self.continuations],
        }


@dataclass
class PromptComparison:
    """One prompt: the unsteered baseline and every steered setting."""

    prompt: str | None
    prompt_tokens: list[int]
    baseline: Setting
    settings: list[Setting]

    @property
    def rows(self) -> list[Setting]:
        return [self.baseline, *self.settings]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "prompt_tokens": self.prompt_tokens, "baseline": self.baseline.to_dict(),
                "settings": [s.to_dict() for s in self.settings]}


@dataclass
class Comparison:
    """Everything ``compare`` measured: plain data, JSON (``to_dict``), HTML (``to_html``, ``_repr_html_``)."""

    model: str
    sae: str
    hook: str
    mode: str
    features: list[int]
    values: list[float] | None
    samples: int
    temperature: float
    top_p: float
    seed: int | None
    max_new_tokens: int
    prepend_bos: bool
    prompts: list[PromptComparison]
    targets: dict | None = None
    """What counted as on target: ``words``, ``lens`` and ``firing`` token texts (None without feature facts)."""
    cards: list = field(default_factory=list)
    """``FeatureCard`` of each clamped feature (facts only; the comparison holds the steered text)."""
    reference: dict | None = None
    _png: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def table(self) -> list[dict]:
        """One flat row per prompt and setting (``pandas.DataFrame(cmp.table())`` makes a data frame)."""
        rows = []
        for p in self.prompts:
            for s in p.rows:
                row = {"prompt": p.prompt, "setting": s.label, "value": s.value,
                       "text": s.continuations[0].text if s.continuations else ""}
                for m in METRICS:
                    row[m] = s.summary[m].mean if m in s.summary else None
                for m in TESTED:
                    row[f"p_{m}"] = s.p_values.get(m)
                rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {
            "model": self.model, "sae": self.sae, "hook": self.hook, "mode": self.mode, "features": self.features,
            "values": self.values, "samples": self.samples, "temperature": self.temperature, "top_p": self.top_p,
            "seed": self.seed, "max_new_tokens": self.max_new_tokens, "prepend_bos": self.prepend_bos,
            "kl": "KL(p_steered || p_unsteered) per generated position, nats, along the steered text",
            "targets": self.targets, "reference": self.reference,
            "prompts": [p.to_dict() for p in self.prompts],
            "cards": [c.to_dict() for c in self.cards],
        }

    def plot_png(self, *, dpi: int = 100) -> bytes:
        """The metrics against the clamp value, as PNG bytes (matplotlib, Agg)."""
        from saesteer.evaluation.plots import comparison_plot_png

        if dpi not in self._png:  # rendered once per resolution (the data do not change after compare)
            self._png[dpi] = comparison_plot_png(self, dpi=dpi)
        return self._png[dpi]

    def to_html(self, *, plot: bytes | None = None) -> str:
        """A self-contained HTML page (plot embedded as base64; no network needed)."""
        from saesteer.evaluation.report import comparison_page

        return comparison_page(self, plot if plot is not None else self.plot_png())

    def save_html(self, path, *, png_path=None) -> bytes:
        """Write the HTML report atomically (and the plot as PNG at ``png_path``); returns the PNG bytes."""
        from saesteer.io import atomic_write_bytes, atomic_write_text

        png = self.plot_png()
        if png_path is not None:
            atomic_write_bytes(png_path, png)
        atomic_write_text(path, self.to_html(plot=png))
        return png

    def _repr_html_(self) -> str:
        from saesteer.evaluation.report import comparison_fragment

        return comparison_fragment(self, self.plot_png())


# --------------------------------------------------------------------------- model passes
def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def _continuation_log_probs(model, prompt: list[int], conts: list[list[int]], pad_token_id: int,
                            edits=()) -> torch.Tensor:
    """Log-softmax ``[B, max_len, V]`` of the next-token distribution before each continuation token,
    teacher-forced (right-padded rows; positions past a row's length are junk)."""
    from saesteer.steering.hooks import hooks

    device = next(model.parameters()).device
    width = max(len(c) for c in conts)
    ids = torch.full((len(conts), len(prompt) + width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, c in enumerate(conts):
        seq = prompt + list(c)
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, :len(seq)] = 1
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}
    keep = width + 1
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    with hooks(model, edits):
        logits = model(**kwargs).logits
    # The last ``width + 1`` positions start at len(prompt) - 1, which predicts the first continuation token.
    logits = logits[:, -keep:-1] if logits.shape[1] >= keep else logits[:, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def next_token_kl(lm, sae, hook: str, prompt_tokens: Sequence[int], continuations: Sequence[Sequence[int]],
                  rows: Sequence, *, mode: str = "delta", max_logits: int = 1 << 24) -> list[list[float]]:
    """``KL(p_steered || p_unsteered)`` (nats) at every generated position of each continuation.

    Row ``b`` continues ``prompt_tokens`` with ``continuations[b]``; its steered distribution clamps
    ``rows[b]`` (anything ``as_clamps`` takes, e.g. ``{feature: value}``; ``[]`` clamps nothing) at ``hook``
    in ``mode``, at every position, as generation does. Both distributions are teacher-forced along the
    given (steered) text: position ``t`` conditions on the prompt and continuation tokens ``< t``.
    Direction and meaning: see the module docstring. Values are clipped at 0 (float round-off).
    """
    model = getattr(lm, "model", lm)
    pad = int(getattr(lm, "pad_token_id", 0) or 0)
    prompt = [int(t) for t in prompt_tokens]
    if len(rows) != len(continuations):
        raise SaesteerError(f"{len(rows)} clamp sets for {len(continuations)} continuations")
    out: list[list[float]] = [[] for _ in continuations]
    todo = [i for i, c in enumerate(continuations) if len(c) > 0]
    if not todo:
        return out
    vocab = int(model.config.vocab_size)
    width = max(len(continuations[i]) for i in todo) + 1
    per_call = max(1, max_logits // (width * vocab))
    for s in range(0, len(todo), per_call):
        chunk = todo[s:s + per_call]
        conts = [[int(t) for t in continuations[i]] for i in chunk]
        lp_u = _continuation_log_probs(model, prompt, conts, pad)
        edit = SAEClamp(sae, rows=[as_clamps(rows[i]) for i in chunk], mode=mode)
        lp_s = _continuation_log_probs(model, prompt, conts, pad, edits=[(hook, edit)])
        kl = (lp_s.exp() * (lp_s - lp_u)).sum(-1).clamp(min=0)  # [B, max_len]
        del lp_u, lp_s
        for b, i in enumerate(chunk):
            out[i] = [float(v) for v in kl[b, :len(conts[b])]]
    return out


def token_pieces(lm, tokens: Sequence[int], context: Sequence[int] = (), *, window: int = 8) -> list[str]:
    """The text each token adds after ``context`` (e.g. the prompt's ids), so that ``prompt text + pieces``
    reads as the model wrote it: spaces survive for SentencePiece tokenizers, which drop a leading space
    when a continuation is decoded alone. Each piece is ``decode(w + [t])`` minus ``decode(w)`` for the
    ``window`` tokens ``w`` before it; where that is not a prefix (a character split across byte tokens),
    the earlier pieces give back the partial character and this piece carries it whole."""
    seq = [int(t) for t in context] + [int(t) for t in tokens]
    pieces = []
    for i in range(len(seq) - len(tokens), len(seq)):
        w = seq[max(0, i - window):i]
        prev, cur = lm.decode(w) if w else "", lm.decode(w + [seq[i]])
        if not cur.startswith(prev):
            n = 0
            while n < min(len(prev), len(cur)) and prev[n] == cur[n]:
                n += 1
            drop = len(prev) - n  # an incomplete character the earlier pieces showed: take it back from them
            for j in range(len(pieces) - 1, -1, -1):
                if drop <= 0:
                    break
                cut = min(drop, len(pieces[j]))
                pieces[j] = pieces[j][:len(pieces[j]) - cut]
                drop -= cut
            prev = prev[:n]
        pieces.append(cur[len(prev):])
    return pieces


# --------------------------------------------------------------------------- compare
def _pairs(clamps) -> list[tuple[int, float | None]]:
    """``(feature, value or None)`` from ints, ``{f: v}``, ``(f, v)``, ``FeatureClamp``s, or lists of those."""
    from collections.abc import Mapping

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


def compare(steerer, prompts: str | None | Sequence[str | None], clamps, *, values: Sequence[float] | None = None,
            samples: int = 1, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
            max_new_tokens: int = 10, mode: str = "delta", prepend_bos: bool = True, facts=None,
            reference_text=None, reference_samples: int = 256, reference_length: int = 64,
            cache_dir=None, cards: bool = True, progress: bool = False) -> Comparison:
    """Continue each prompt unsteered and under each clamp setting, and measure every continuation.

    ``steerer``: a :class:`~saesteer.steerer.Steerer` with an SAE. ``prompts``: a prompt, or a list (None:
    BOS alone). ``clamps``: ``{feature: value}``, ``FeatureClamp``s, ``(feature, value)`` pairs; with
    ``values``, the features alone (``123`` or ``[123, 456]``) are enough, and every value ``v`` becomes one
    setting that clamps all of them to ``v`` (values given in ``clamps`` are then not used).
    ``samples``: continuations per setting (more than one needs ``temperature > 0``; sample ``i`` uses the
    same seeded stream in every setting).

    ``facts``: a ``FactsTable`` (``feature_facts``), None to get it from the cache or compute it (on
    ``reference_text``, or ``reference_samples`` x ``reference_length`` tokens the model samples), or False
    to skip on-target hits and feature cards. Generation keywords are those of ``Steerer.generate_many``.
    """
    sae = steerer._need_sae()
    hook = steerer._need_hook()
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SaesteerError("give at least one prompt")
    if samples < 1:
        raise SaesteerError(f"samples must be >= 1, got {samples}")
    if samples > 1 and temperature == 0:
        raise SaesteerError("several samples need sampling: pass temperature > 0 (greedy continuations are all"
                            " the same)")
    if values is not None:
        values = [float(v) for v in values]
    settings_spec = _settings(clamps, values)
    features = sorted({c.feature for c in settings_spec[0][2]})
    for f in features:
        sae.check_feature(f)
    if facts is None:
        from saesteer.evaluation.feature_facts import feature_facts

        facts = feature_facts(steerer, reference_text=reference_text, samples=reference_samples,
                              length=reference_length, cache_dir=cache_dir, progress=progress,
                              engine=steerer.engine)
    if facts is False:
        facts = None
    targets = _targets_for(facts, features)
    gen_kwargs = dict(mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                      prepend_bos=prepend_bos)
    results = [_compare_prompt(steerer, prompt, settings_spec, samples, targets, gen_kwargs) for prompt in prompts]
    lm = steerer.lm
    target_info = None
    card_list = []
    if facts is not None:
        target_info = {
            "words": sorted(targets.words),
            "lens": [lm.decode([t]) for t in sorted(targets.lens_ids)],
            "firing": [lm.decode([t]) for t in sorted(targets.token_ids)],
        }
        if cards:
            from saesteer.evaluation.feature_card import feature_card

            card_list = [feature_card(steerer, f, values=(), facts=facts) for f in features]
    return Comparison(
        model=lm.name, sae=sae.cfg.source or "", hook=hook, mode=mode, features=features, values=values,
        samples=samples, temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
        prepend_bos=prepend_bos, prompts=results, targets=target_info, cards=card_list,
        reference=dict(facts.meta.get("reference", {})) if facts is not None else None,
    )
