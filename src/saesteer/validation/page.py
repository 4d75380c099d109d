"""The validation's outputs: ``report.json``, ``report.html`` and ``features.jsonl``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from saesteer.evaluation.report import e, html_page
from saesteer.io import atomic_write_json, atomic_write_text
from saesteer.validation.criterion import result_dict, shown

def write_outputs(result, out_dir: Path, per_prompt: dict, facts) -> None:
    """``report.json``, ``report.html`` and ``features.jsonl`` (every feature's clearest or best text per prompt)."""
    lines = []
    clear = {p.label: set(p.clear) for p in result.prompts}
    for f in range(result.n_features):
        rec = {"feature": f, "firing_words": facts.words[f], "max_activation": round(float(facts.max_activation[f]), 4)}
        for lbl, by_feature in per_prompt.items():
            rec[f"clear_{lbl}"] = f in clear[lbl]
            rec[lbl] = result_dict(*shown(by_feature[f]))
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(out_dir / "features.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "report.json", result.report())
    atomic_write_text(out_dir / "report.html", report_page(result))


def _marked(text: str, firing: Iterable[str]) -> str:
    """``text`` HTML-escaped, with the words that are firing words in ``<mark>``."""
    targets = {w.lower() for w in firing}
    out, pos = [], 0
    for m in re.finditer(r"[^\W\d_]+", text):
        out.append(e(text[pos:m.start()]))
        word = m.group(0)
        out.append(f"<mark>{e(word)}</mark>" if word.lower() in targets else e(word))
        pos = m.end()
    out.append(e(text[pos:]))
    return "".join(out)


def _load(machine: dict) -> str:
    a, b = machine.get("load_avg_1min"), machine.get("load_avg_1min_end")
    return "unknown" if a is None else f"{a:.2f} at the start, {b:.2f} at the end on {machine.get('cpus')} CPUs"


def report_page(v) -> str:
    """The validation as one self-contained HTML page."""
    c = v.config
    prompt = {p.label: p for p in v.prompts}
    shown = {"bos": "&lt;BOS&gt;", "prompt": e(c["prompt"])}
    rows = [
        ("variance explained (held-out)", f"{v.variance_explained:.4f}"),
        ("L0", f"{v.l0:.2f}"),
        ("dead latents", f"{100 * v.dead_fraction:.2f}%"),
        ("features swept", str(v.n_features)),
        ("steer clearly from BOS", f"{v.clear_bos} <span class=\"meta\">(chance {v.chance_bos:.1f})</span>"),
        (f"steer clearly from {e(c['prompt'])!s}", f"{v.clear_prompt} <span class=\"meta\">(chance "
                                                   f"{v.chance_prompt:.1f})</span>"),
        ("steer clearly from both", f"{v.clear_both} <span class=\"meta\">(chance {v.chance_both:.1f})</span>"),
        ("clear among the score's top 20", f"{v.top20_score_hits} <span class=\"meta\">(score without fluency: "
                                           f"{v.top20_score_hits_no_fluency})</span>"),
        ("time", f"{v.timings.get('total_s', 0):.0f}s (sampling {v.timings.get('sample_s', 0):.0f}s, training "
                 f"{v.timings.get('train_s', 0):.0f}s, facts {v.timings.get('facts_s', 0):.0f}s, sweeps "
                 f"{v.timings.get('sweep_s', 0):.0f}s); 1-minute load average {_load(v.machine)}"),
    ]
    body = [f"<div class=\"saesteer-report\"><h1>Steering validation on {e(Path(v.model).name)}</h1>",
            f"<p class=\"meta\">SAE: {c['latents']} latents, k={c['k']}, at <code>{e(v.hook)}</code>, trained on "
            f"{c['tokens']:,} self-sampled tokens (seed {c['seed']}). Values: {e(list(c['values']))} and "
            f"{e(list(c['relative_values']))} x each feature's maximum activation; {c['max_new_tokens']} new tokens."
            "</p><table>"]
    body += [f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in rows]
    body.append("</table><p class=\"meta\">A feature <b>steers clearly</b> when, at some value, the continuation has at"
                " least 2 of its firing words (function words removed) where the unsteered text has none, and its mean"
                " log-probability under the unsteered model is at most 1 nat/token below the unsteered text's. "
                "<b>Chance</b>: the same count with each feature's texts checked against another feature's firing "
                "words.</p><h2>Unsteered</h2><table>")
    for lbl in ("bos", "prompt"):
        p = prompt[lbl]
        flu = "–" if p.baseline_fluency is None else f"{p.baseline_fluency:.3f}"
        body.append(f"<tr class=\"baseline\"><td>{shown[lbl]}</td><td class=\"text\">{e(p.baseline)}</td>"
                    f"<td class=\"num\">{flu} nats/token</td></tr>")
    body.append(f"</table><h2>The {len(v.best)} best features</h2>")
    for b in v.best:
        words = "".join(f"<span>{e(w)}</span>" for w in b.firing_words) or "<span class=\"meta\">none</span>"
        body.append(f"<div class=\"card\"><h3>Feature {b.feature} <span class=\"meta\">clear on: "
                    f"{e(', '.join(b.clear_on) or 'neither')}; max activation {b.max_activation:.2f}</span></h3>"
                    f"<div class=\"chips words\">{words}</div><table>")
        for lbl, r in b.texts.items():
            how = f"{r['value']:g} x max ({r['clamp']:.2f})" if r["relative"] else f"{r['value']:g}"
            drop = "–" if r["fluency_drop"] is None else f"{r['fluency_drop']:.2f}"
            body.append(f"<tr><td>{shown[lbl]}<br><span class=\"meta\">clamp {e(how)}<br>{r['fire_hits']} hits, "
                        f"drop {drop}{' — clear' if r['clear'] else ''}</span></td><td class=\"text\">"
                        f"<span class=\"prompt\">{shown[lbl]}</span>{_marked(r['text'], b.firing_words)}</td></tr>")
        body.append("</table></div>")
    body.append("<h2>All features that steer clearly</h2><dl>")
    for lbl in ("bos", "prompt"):
        body.append(f"<dt>from {shown[lbl]}</dt><dd>{e(', '.join(map(str, prompt[lbl].clear)) or 'none')}</dd>")
    body.append("</dl></div>")
    return html_page(f"saesteer validation: {Path(v.model).name}", "".join(body))
