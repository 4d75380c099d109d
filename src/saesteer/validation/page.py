"""The validation's outputs: ``report.json``, ``report.html`` and ``features.jsonl``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from markupsafe import Markup, escape

from saesteer.evaluation.templating import page, render
from saesteer.io import atomic_write_json, atomic_write_text
from saesteer.validation.criterion import result_dict, shown

def write_outputs(result, out_dir: Path, per_prompt: dict, facts, levels: dict | None = None) -> None:
    """``report.json``, ``report.html`` and ``features.jsonl`` (every feature's clearest or best text per prompt)."""
    lines = []
    clear = {p.label: set(p.clear) for p in result.prompts}
    for f in range(result.n_features):
        rec = {"feature": f, "firing_words": facts.words[f], "max_activation": round(float(facts.max_activation[f]), 4)}
        for lbl, by_feature in per_prompt.items():
            rec[f"clear_{lbl}"] = f in clear[lbl]
            level = None if levels is None else levels[lbl][f]
            rec[lbl] = result_dict(*shown(by_feature[f], level), level)
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(out_dir / "features.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "report.json", result.report())
    atomic_write_text(out_dir / "report.html", report_page(result))


def _marked(text: str, firing: Iterable[str]) -> Markup:
    """``text`` as HTML, escaped, with the words that are firing words in ``<mark>``."""
    targets = {w.lower() for w in firing}
    out, pos = [], 0
    for m in re.finditer(r"[^\W\d_]+", text):
        out.append(escape(text[pos:m.start()]))
        word = m.group(0)
        out.append(Markup("<mark>{}</mark>").format(word) if word.lower() in targets else escape(word))
        pos = m.end()
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def _load(machine: dict) -> str:
    a, b = machine.get("load_avg_1min"), machine.get("load_avg_1min_end")
    return "unknown" if a is None else f"{a:.2f} at the start, {b:.2f} at the end on {machine.get('cpus')} CPUs"


TEST_NAMES = {"words": "clear by firing words", "readback": "own text in the readback's top 5%",
              "both": "both, on one text", "word_rank": "firing words in the top 5% (1 beyond the unsteered text)"}
CROSS_ROWS = (("steer (saesteer top)", "top_steer"), ("firing-word score", "top_score"),
              ("firing-word rank", "top_words"), ("readback rank", "top_readback"))


def report_page(v) -> str:
    """The validation as one self-contained HTML page (``evaluation/templates/validation.html.j2``)."""
    c = v.config
    took = (f"{v.timings.get('total_s', 0):.0f}s (sampling {v.timings.get('sample_s', 0):.0f}s, training "
            f"{v.timings.get('train_s', 0):.0f}s, facts {v.timings.get('facts_s', 0):.0f}s, sweeps "
            f"{v.timings.get('sweep_s', 0):.0f}s); 1-minute load average {_load(v.machine)}")
    best = [{"feature": b.feature, "clear_on": b.clear_on, "passes_both_on": b.passes_both_on,
             "max_activation": b.max_activation,
             "firing_words": b.firing_words,
             "rows": [{"label": lbl, "fire_hits": r["fire_hits"], "fluency_drop": r["fluency_drop"], "clear": r["clear"],
                       "how": f"{r['value']:g} x max ({r['clamp']:.2f})" if r["relative"] else f"{r['value']:g}",
                       "marked": _marked(r["text"], b.firing_words)} for lbl, r in b.texts.items()]}
            for b in v.best]
    body = render("validation.html.j2", v=v, c=c, model_name=Path(v.model).name, time=took, best=best,
                  prompts={p.label: p for p in v.prompts}, tests=TEST_NAMES, cross=CROSS_ROWS)
    return page(f"saesteer validation: {Path(v.model).name}", body)
