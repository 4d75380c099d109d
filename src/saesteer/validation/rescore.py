"""Count a finished validation again from what it stored, without sampling, training or sweeping.

``rescore(out_dir, word_rule=...)`` reads ``sweeps.json.gz`` (``validation.stored``), the feature facts and
``report.json`` of a ``saesteer validate --out`` folder and returns the nulls and the top-20 cross-checks
exactly as :func:`~saesteer.validation.validate` computes them (``measures.measure_prompts``), under another
firing-word rule if asked: a change of criterion is measured on the same texts. The scores (``score``,
``steer``, word and readback ranks) are computed again from the stored measures and the facts' firing words,
with the formulas of this version.
"""

from __future__ import annotations

import json
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import FactsTable
from saesteer.evaluation.text_metrics import repetition, score
from saesteer.sweep.rank import annotate, weigh
from saesteer.validation.criterion import WORD_RULE
from saesteer.validation.measures import measure_prompts
from saesteer.validation.stored import load_sweeps


def _scored(records: list[dict]) -> list[dict]:
    """The records with their firing-word ``score`` computed again (``text_metrics.score``, as it is now)."""
    return [{**r, "score": score(r.get("fire_hits", 0), r.get("base_fire_hits", 0), r.get("lens_hits", 0),
                                 r.get("base_lens_hits", 0), repetition=r.get("repetition") or 0.0,
                                 fluency_drop=r.get("fluency_drop"))} for r in records]


def _base_repetition(baseline: dict) -> float | None:
    """The unsteered text's repetition from its stored tokens (runs before they were stored: None, and
    ``annotate`` takes it from a result equal to the unsteered text)."""
    tokens = baseline.get("tokens")
    return None if tokens is None else repetition(tokens)


def rescore(out_dir: str | Path, *, word_rule: str = WORD_RULE, permutations: int | None = None,
            seed: int | None = None) -> dict:
    """``{"word_rule", "nulls", "cross"}`` of a validation folder (the features lists left out of the nulls);
    ``permutations`` and ``seed`` default to the run's."""
    out_dir = Path(out_dir)
    report_path = out_dir / "report.json"
    if not report_path.is_file() or not FactsTable.exists(out_dir / "facts"):
        raise SaesteerError(f"{out_dir} holds no report.json and facts/; give the --out folder of saesteer validate")
    report = json.loads(report_path.read_text())
    data = load_sweeps(out_dir)
    facts = FactsTable.load(out_dir / "facts")
    cfg = report["config"]
    annotated = {lbl: [annotate(_scored(recs), facts.words, base_repetition=_base_repetition(p["baseline"]))
                       for recs in p["sweeps"]] for lbl, p in data["prompts"].items()}
    for sweeps in annotated.values():
        weigh([r for recs in sweeps for r in recs])
    baselines = {lbl: p["baseline"]["text"] for lbl, p in data["prompts"].items()}
    nulls, cross, _ = measure_prompts(annotated, baselines, facts, data["expected_hits"], report["n_features"],
                                      word_rule=word_rule,
                                      permutations=cfg["permutations"] if permutations is None else permutations,
                                      seed=cfg["seed"] if seed is None else seed)
    slim = {lbl: {t: {k: v for k, v in d.items() if k != "features"} for t, d in tests.items()}
            for lbl, tests in nulls.items()}
    return {"word_rule": word_rule, "nulls": slim, "cross": cross}
