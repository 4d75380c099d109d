"""Count a finished validation again from what it stored, without sampling, training or sweeping.

``rescore(out_dir, word_rule=...)`` reads ``sweeps.json.gz`` (``validation.stored``), the feature facts and
``report.json`` of a ``saesteer validate --out`` folder and returns the nulls and the top-20 cross-checks
exactly as :func:`~saesteer.validation.validate` computes them (``measures.measure_prompts``), under another
firing-word rule if asked: a change of criterion is measured on the same texts.
"""

from __future__ import annotations

import json
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import FactsTable
from saesteer.sweep.rank import annotate
from saesteer.validation.criterion import WORD_RULE
from saesteer.validation.measures import measure_prompts
from saesteer.validation.stored import load_sweeps


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
    annotated = {lbl: [annotate(recs) for recs in p["sweeps"]] for lbl, p in data["prompts"].items()}
    baselines = {lbl: p["baseline"]["text"] for lbl, p in data["prompts"].items()}
    nulls, cross, _ = measure_prompts(annotated, baselines, facts, data["expected_hits"], report["n_features"],
                                      word_rule=word_rule,
                                      permutations=cfg["permutations"] if permutations is None else permutations,
                                      seed=cfg["seed"] if seed is None else seed)
    slim = {lbl: {t: {k: v for k, v in d.items() if k != "features"} for t, d in tests.items()}
            for lbl, tests in nulls.items()}
    return {"word_rule": word_rule, "nulls": slim, "cross": cross}
