"""The settings of ``compare`` (``CompareConfig``) and of a feature card (``FeatureCardConfig``), declared once.

``compare(steerer, prompts, clamps, config, **keywords)``, ``feature_card(steerer, feature, config,
**keywords)``, ``saesteer compare`` and ``saesteer feature`` (their options and help are generated from these
fields) all use them. A new option is one field here, plus its use. The prompts, clamps and feature are the
job's inputs (arguments), not settings; where the output goes (``--out``, ``--json``) is the command's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

from saesteer.config import Config, setting
from saesteer.errors import SaesteerError
from saesteer.steering.clamp import MODE_HELP, MODES
from saesteer.steering.values import check_value


def parse_clamp_values(text: str | None) -> list[float] | None:
    """``"-20,-10,0,10,20"`` -> ``[-20.0, -10.0, 0.0, 10.0, 20.0]``: one list, each entry a setting in the order
    given (an empty entry is an error); None/"" -> None (not given). A sweep's ``--values`` is
    ``sweep.spec.parse_values`` (repeatable, duplicates dropped)."""
    if text is None or not str(text).strip():
        return None
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise SaesteerError(f"bad clamp value {part.strip()!r} in {text!r}; write numbers separated by"
                                " commas, e.g. --values -20,-10,0,10,20") from None
        out.append(check_value(v, "clamp value"))
    return out


def clamp_values(values) -> tuple[float, ...] | None:
    """The ``values`` setting from text (``"-20,0,20"``; empty: None) or a sequence of numbers (``()``: none)."""
    if values is None or isinstance(values, str):
        parsed = parse_clamp_values(values)
        return None if parsed is None else tuple(parsed)
    if isinstance(values, numbers.Real):
        raise SaesteerError(f"values must be a list of clamp values, got {values!r}")
    return tuple(check_value(float(v), "clamp value") for v in values)


def _reference_text(path) -> str | None:
    if path is not None and not Path(path).is_file():
        raise SaesteerError(f"reference text file not found: {path}")
    return path


# Settings both jobs share, one factory each (a dataclass field belongs to one class).
def _reference_text_setting():
    return setting(None, cli_name="--text", metavar="FILE", parse=_reference_text,
                   help="Reference text file for firing words and contexts (default: text the model samples"
                        " itself). Facts are cached under $SAESTEER_CACHE.")


def _reference_samples_setting():
    return setting(256, min=1, max=1 << 20, help="Sequences the model samples as reference text (without --text).")


def _reference_length_setting():
    return setting(64, min=1, max=4096, help="Tokens per reference sequence.")


def _reference_seed_setting():
    return setting(0, help="Seed of the reference text the model samples (without --text), e.g. a sweep's"
                           " --reference-seed, so that both use the same facts.")


def _cache_dir_setting():
    return setting(None, cli=False, record=False,
                   help="Feature-facts cache (default: $SAESTEER_CACHE or ~/.cache/saesteer).")


def _max_new_tokens_setting(default: int):
    return setting(default, min=0, max=4096, help="Tokens generated after the prompt.")


class ReferenceSettings:
    """The reference-text settings both configs hold (fields ``reference_*`` and ``cache_dir``), as the keywords
    of the functions that use them: a new reference setting is a field and one line in each method here."""

    def facts_keywords(self) -> dict:
        """Keywords of ``evaluation.feature_facts.feature_facts``."""
        return dict(reference_text=self.reference_text, samples=self.reference_samples,
                    length=self.reference_length, seed=self.reference_seed, cache_dir=self.cache_dir)

    def scale_keywords(self) -> dict:
        """Keywords of ``strength.feature_scale`` (and ``strength.relative_settings``)."""
        return dict(reference_text=self.reference_text, reference_samples=self.reference_samples,
                    reference_length=self.reference_length, reference_seed=self.reference_seed,
                    cache_dir=self.cache_dir)


@dataclass(frozen=True)
class CompareConfig(ReferenceSettings, Config):
    """How ``compare`` steers and measures: every field is a keyword of
    :func:`saesteer.evaluation.compare.compare` and (unless Python only) an option of ``saesteer compare``."""

    name = "compare settings"

    values: tuple[float, ...] | None = setting(
        None, parse=clamp_values, metavar="V1,V2,...",
        help="Strength sweep: one setting per value, each clamping every --clamp feature to it (0 clamps to 0;"
             " the unsteered row is separate). A --clamp FEATURE with no value and no --values is clamped to 2 x"
             " its max activation on the reference text.")
    relative: bool = setting(
        False, help="Read the values (--values, or FEATURE=VALUE) as multiples of each feature's max activation.")
    samples: int = setting(1, min=1, max=256,
                           help="Sampled continuations per setting (needs --temperature > 0); sample i uses the same"
                                " seeded random stream in every setting.")
    max_new_tokens: int = _max_new_tokens_setting(10)
    temperature: float = setting(0.0, help="0 = greedy (argmax); above 0 samples.")
    top_p: float = setting(1.0, help="Nucleus sampling threshold.")
    seed: int | None = setting(
        None, help="Seed for sampling (default: a fresh one, reported so the text can be reproduced).")
    mode: str = setting("delta", choices=MODES, help=MODE_HELP)
    prepend_bos: bool = setting(True, cli_name="--no-bos", help="Do not put the BOS token in front of the prompt.")
    reference_text: str | None = _reference_text_setting()
    reference_samples: int = _reference_samples_setting()
    reference_length: int = _reference_length_setting()
    reference_seed: int = _reference_seed_setting()
    use_facts: bool = setting(True, cli_name="--no-facts",
                              help="Skip feature facts: no on-target hits, no feature cards.")
    cards: bool = setting(True, cli=False, help="Add the feature card of each clamped feature (needs facts).")
    sweep: str | None = setting(
        None, metavar="DIR", path="dir",
        help="A sweep folder of the same SAE: the report adds each clamped feature's results there (its text,"
             " steer, word rank and readback rank, as saesteer top gives them). Without it the ranks are not"
             " measured: they rank a feature's text against every other swept feature's.")
    cache_dir: str | None = _cache_dir_setting()

    def normalise(self) -> None:
        if self.samples > 1 and self.temperature == 0:
            raise SaesteerError("several samples need sampling: pass temperature > 0 (--temperature; greedy"
                                " continuations are all the same)")


@dataclass(frozen=True)
class FeatureCardConfig(ReferenceSettings, Config):
    """What a feature card shows: every field is a keyword of
    :func:`saesteer.evaluation.feature_card.feature_card` and (unless Python only) an option of
    ``saesteer feature``. Without ``values``, the card's steered samples are at ``DEFAULT_VALUES`` (absolute)
    in Python and at -2, 1, 2, 4 x the feature's max activation on the command line."""

    name = "feature card settings"

    values: tuple[float, ...] | None = setting(
        None, parse=clamp_values, metavar="V1,V2,...",
        help="Absolute clamp values of the steered samples [default: -2,1,2,4 x the feature's max activation].")
    relative: bool = setting(False, help="Read --values as multiples of the feature's max activation.")
    prompt: str | None = setting(None, help="Prompt of the steered samples (default: BOS alone).")
    max_new_tokens: int = _max_new_tokens_setting(20)
    mode: str = setting("delta", choices=MODES,
                        help="delta / reconstruct clamp the feature to each value; add adds value x its decoder"
                             " direction.")
    reference_text: str | None = _reference_text_setting()
    reference_samples: int = _reference_samples_setting()
    reference_length: int = _reference_length_setting()
    reference_seed: int = _reference_seed_setting()
    n_tokens: int = setting(10, cli_name="--top", min=1, max=100, help="Tokens and words listed per row.")
    n_contexts: int = setting(8, cli_name="--contexts", min=0, max=32,
                              help="Contexts where the feature is most active.")
    context: int = setting(10, min=0, cli=False, help="Tokens shown before the active token of a context.")
    temperature: float = setting(0.0, cli=False, help="Sampling temperature of the steered samples (0: greedy).")
    top_p: float = setting(1.0, cli=False, help="Nucleus sampling threshold of the steered samples.")
    seed: int | None = setting(None, cli=False, help="Seed for sampling the steered samples.")
    prepend_bos: bool = setting(True, cli=False, help="Put the BOS token in front of the prompt.")
    cache_dir: str | None = _cache_dir_setting()
