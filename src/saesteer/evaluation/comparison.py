"""What ``compare`` measured, as plain data: continuations, settings, prompts, and the whole comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

from saesteer.evaluation.plots import comparison_plot_png
from saesteer.evaluation.report import comparison_fragment, comparison_page
from saesteer.evaluation.stats import METRICS, TESTED, Stat
from saesteer.io import atomic_write_bytes, atomic_write_text
from saesteer.steering.clamp import FeatureClamp


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
    sweep: str | None = None
    """The sweep folder the ranks come from (``CompareConfig.sweep``; None: ranks not measured)."""
    sweep_results: list[dict] | None = None
    """The features' results in that sweep, best first (``compare.sweep_results``: text, steer, word and
    readback ranks as ``saesteer top`` gives them)."""
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
            "targets": self.targets, "reference": self.reference, "sweep": self.sweep,
            "sweep_results": self.sweep_results,
            "prompts": [p.to_dict() for p in self.prompts],
            "cards": [c.to_dict() for c in self.cards],
        }

    def plot_png(self, *, dpi: int = 100) -> bytes:
        """The metrics against the clamp value, as PNG bytes (matplotlib, Agg)."""
        if dpi not in self._png:  # rendered once per resolution (the data do not change after compare)
            self._png[dpi] = comparison_plot_png(self, dpi=dpi)
        return self._png[dpi]

    def to_html(self, *, plot: bytes | None = None) -> str:
        """A self-contained HTML page (plot embedded as base64; no network needed)."""
        return comparison_page(self, plot if plot is not None else self.plot_png())

    def save_html(self, path, *, png_path=None) -> bytes:
        """Write the HTML report atomically (and the plot as PNG at ``png_path``); returns the PNG bytes."""
        png = self.plot_png()
        if png_path is not None:
            atomic_write_bytes(png_path, png)
        atomic_write_text(path, self.to_html(plot=png))
        return png

    def _repr_html_(self) -> str:
        return comparison_fragment(self, self.plot_png())
