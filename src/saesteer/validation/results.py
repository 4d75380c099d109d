"""What :func:`saesteer.validation.validate` returns: the outcome per prompt, per shown feature, and in all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
