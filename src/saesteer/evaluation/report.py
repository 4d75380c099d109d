"""Rendering comparisons and feature cards: self-contained HTML (for files and notebooks) and plain text.

The HTML needs no network: styles are inline, the plot is a base64 PNG in a ``data:`` URL, there are no
scripts, fonts or external links. Every piece of model or user text goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import math

KL_SATURATION = 2.0
"""Token backgrounds reach full colour at this KL (nats)."""

_CSS = """
.saesteer-report { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
  font-size: 14px; line-height: 1.45; max-width: 1240px; }
.saesteer-report h1 { font-size: 22px; margin: 8px 0 4px; }
.saesteer-report h2 { font-size: 18px; margin: 22px 0 6px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.saesteer-report h3 { font-size: 15px; margin: 14px 0 4px; }
.saesteer-report .meta { color: #555; font-size: 13px; }
.saesteer-report .meta code, .saesteer-report code { background: #f3f3f5; padding: 0 3px; border-radius: 3px; }
.saesteer-report table { border-collapse: collapse; margin: 6px 0 10px; width: 100%; }
.saesteer-report th, .saesteer-report td { border: 1px solid #e0e0e4; padding: 4px 7px; vertical-align: top;
  text-align: left; }
.saesteer-report th { background: #f6f6f8; font-weight: 600; font-size: 13px; }
.saesteer-report td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.saesteer-report tr.baseline td { background: #fbfbf4; }
.saesteer-report .text { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 13px; }
.saesteer-report .prompt { color: #777; }
.saesteer-report .sample { margin: 0 0 4px; }
.saesteer-report .sample-n { color: #999; font-size: 11px; margin-right: 4px; }
.saesteer-report .se { color: #888; font-size: 11px; }
.saesteer-report .sig { font-weight: 700; color: #b00; }
.saesteer-report .plot { width: 100%; max-width: 1200px; border: 1px solid #eee; }
.saesteer-report .card { border: 1px solid #d8d8de; border-radius: 6px; padding: 8px 12px; margin: 10px 0;
  background: #fff; }
.saesteer-report .chips span { display: inline-block; background: #eef3fb; border-radius: 3px; padding: 0 4px;
  margin: 1px 2px; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; white-space: pre; }
.saesteer-report .chips.neg span { background: #fbeeee; }
.saesteer-report .chips.words span { background: #eef8ee; font-family: inherit; }
.saesteer-report .chips small { color: #888; }
.saesteer-report mark { background: #ffd54f; padding: 0 1px; border-radius: 2px; }
.saesteer-report dl { display: grid; grid-template-columns: 170px 1fr; gap: 2px 10px; margin: 6px 0; }
.saesteer-report dt { color: #555; }
.saesteer-report dd { margin: 0; }
"""


def e(value) -> str:
    """HTML-escape anything (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _p(p) -> str:
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def html_page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>body {{ margin: 16px 20px; background: #fff; }}{_CSS}</style>"
        f"</head><body>{body}</body></html>\n"
    )


def _fragment(body: str) -> str:
    return f"<div class=\"saesteer-report\"><style>{_CSS}</style>{body}</div>"


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------- feature cards
def _chips(tokens, cls: str = "", digits: int = 2) -> str:
    if not tokens:
        return "<span class=\"meta\">none</span>"
    items = "".join(f"<span title=\"{e(f'{t.value:.3f}')}\">{e(repr(t.text)[1:-1])} <small>{_fmt(t.value, digits)}"
                    f"</small></span>" for t in tokens)
    return f"<div class=\"chips {cls}\">{items}</div>"


def _reference_text(ref: dict) -> str:
    if not ref:
        return "unknown"
    if ref.get("source") == "sampled":
        return (f"{ref.get('sequences')} sequences of {ref.get('length')} tokens the model sampled from BOS "
                f"(temperature {ref.get('temperature', 1)}, seed {ref.get('seed')})")
    return f"{ref.get('source')} ({ref.get('sequences')} chunks of {ref.get('length')} tokens)"


def card_body(card) -> str:
    parts = [f"<div class=\"card\"><h3>Feature {e(card.feature)} <span class=\"meta\">at <code>{e(card.hook)}"
             f"</code>{(' — ' + e(card.sae)) if card.sae else ''}</span></h3><dl>"]
    parts.append(f"<dt>decoder norm</dt><dd>{_fmt(card.decoder_norm, 4)}</dd>")
    parts.append(f"<dt>max activation</dt><dd>{_fmt(card.max_activation, 3)} <span class=\"meta\">(active on "
                 f"{100 * card.frequency:.2f}% of reference tokens)</span></dd>")
    parts.append(f"<dt>promotes (logit lens)</dt><dd>{_chips(card.promoted)}</dd>")
    parts.append(f"<dt>suppresses</dt><dd>{_chips(card.suppressed, 'neg')}</dd>")
    parts.append(f"<dt>firing tokens</dt><dd>{_chips(card.firing_tokens)}</dd>")
    words = "".join(f"<span>{e(w)}</span>" for w in card.firing_words) or "<span class=\"meta\">none</span>"
    parts.append(f"<dt>firing words</dt><dd><div class=\"chips words\">{words}</div></dd>")
    parts.append(f"<dt>reference text</dt><dd class=\"meta\">{e(_reference_text(card.reference))}</dd></dl>")
    if card.samples:
        shown = e(card.prompt) if card.prompt else "&lt;BOS&gt;"
        rows = [f"<tr class=\"baseline\"><td>unsteered</td><td class=\"text\"><span class=\"prompt\">{shown}</span>"
                f"{e(card.unsteered.shown)}</td></tr>"]
        rows += [f"<tr><td class=\"num\">{e(f'{s.value:g}')}</td><td class=\"text\"><span class=\"prompt\">{shown}"
                 f"</span>{e(s.shown)}</td></tr>" for s in card.samples]
        parts.append(f"<h3>Steered samples <span class=\"meta\">({e(card.mode)} mode)</span></h3><table>"
                     f"<tr><th style=\"width:90px\">clamp</th><th>continuation</th></tr>{''.join(rows)}</table>")
    if card.contexts:
        rows = [f"<tr><td class=\"num\">{_fmt(c.activation, 3)}</td><td class=\"text\">{e(c.before)}"
                f"<mark title=\"activation {e(f'{c.activation:.3f}')}\">{e(c.token)}</mark>{e(c.after)}</td></tr>"
                for c in card.contexts]
        parts.append("<h3>Where it is most active</h3><table><tr><th style=\"width:90px\">activation</th>"
                     f"<th>context (active token marked)</th></tr>{''.join(rows)}</table>")
    else:
        parts.append("<p class=\"meta\">It never fired on the reference text.</p>")
    parts.append("</div>")
    return "".join(parts)


def card_fragment(card) -> str:
    return _fragment(card_body(card))


def card_page(card) -> str:
    return html_page(f"saesteer feature {card.feature}", _fragment(card_body(card)))


def _show(text: str) -> str:
    """Text on one terminal line: newlines and tabs made visible."""
    return repr(text)[1:-1]


def card_text(card, *, color: bool = False, width: int = 100) -> str:
    import click

    def style(s: str, **kw) -> str:
        return click.style(s, **kw) if color else s

    def toks(ts) -> list[str]:
        return [f"{t.text!r} ({t.value:.2f})" for t in ts] or ["none"]

    def wrap(label: str, value) -> list[str]:
        """Items (or one string) after a label, wrapped between items, never inside one."""
        items = [value] if isinstance(value, str) else list(value)
        room = max(40, width - 18)
        lines, cur = [], ""
        for i, item in enumerate(items):
            piece = item + (", " if i < len(items) - 1 and not isinstance(value, str) else "")
            if cur and len(cur) + len(piece.rstrip()) > room:
                lines.append(cur.rstrip())
                cur = ""
            cur += piece
        lines.append(cur.rstrip())
        return [f"{label:<18}{lines[0]}"] + [" " * 18 + ln for ln in lines[1:]]

    out = [style(f"Feature {card.feature}", bold=True) + f"  at {card.hook}" + (f"  ({card.sae})" if card.sae else "")]
    out += wrap("decoder norm", f"{card.decoder_norm:.4f}")
    out += wrap("max activation", f"{card.max_activation:.3f}  (active on {100 * card.frequency:.2f}% of"
                                  " reference tokens)")
    out += wrap("promotes", toks(card.promoted))
    out += wrap("suppresses", toks(card.suppressed))
    out += wrap("firing tokens", toks(card.firing_tokens))
    out += wrap("firing words", list(card.firing_words) or ["none"])
    out += wrap("reference text", _reference_text(card.reference))
    if card.samples:
        shown = card.prompt if card.prompt else "<BOS>"
        out.append("")
        out.append(style(f"Steered samples of {shown!r} ({card.mode} mode)", bold=True))
        out.append(f"  {'unsteered':>10}  {_show(card.unsteered.shown)}")
        for s in card.samples:
            out.append(f"  {s.value:>10g}  {_show(s.shown)}")
    out.append("")
    out.append(style("Where it is most active (active token in [[ ]])", bold=True))
    if not card.contexts:
        out.append("  it never fired on the reference text")
    for c in card.contexts:
        mark = style(f"[[{_show(c.token)}]]", bold=True, fg="yellow")
        out.append(f"  {c.activation:>8.3f}  {_show(c.before)}{mark}{_show(c.after)}")
    return "\n".join(out)


# --------------------------------------------------------------------------- comparisons
def _kl_tokens(cont) -> str:
    spans = []
    for piece, kl in zip(cont.pieces, cont.kl):
        a = min(max(kl, 0.0) / KL_SATURATION, 1.0) * 0.85
        spans.append(f"<span style=\"background: rgba(230,85,13,{a:.3f})\" title=\"KL {kl:.3f} nats\">"
                     f"{e(piece)}</span>")
    return "".join(spans)


def _stat_cell(stat, digits: int = 2, p=None) -> str:
    if stat is None or stat.mean is None:
        return "<td class=\"num\">–</td>"
    se = f"<br><span class=\"se\">± {_fmt(stat.se, digits)}</span>" if stat.se is not None else ""
    pv = ""
    if p is not None:
        cls = " sig" if p < 0.05 else ""
        pv = f"<br><span class=\"se{cls}\">p {_p(p)}</span>"
    return f"<td class=\"num\">{_fmt(stat.mean, digits)}{se}{pv}</td>"


def _prompt_table(cmp, p) -> str:
    shown = e(p.prompt) if p.prompt else "&lt;BOS&gt;"
    head = ("<tr><th style=\"width:110px\">setting</th><th>continuation (token background: KL at that position)</th>"
            "<th>mean KL</th><th>firing-word hits</th><th>promoted-token hits</th><th>fluency</th>"
            "<th>repetition</th></tr>")
    rows = []
    for s in p.rows:
        texts = []
        for c in s.continuations:
            n = f"<span class=\"sample-n\">#{c.sample}</span>" if len(s.continuations) > 1 else ""
            texts.append(f"<div class=\"sample text\">{n}<span class=\"prompt\">{shown}</span>{_kl_tokens(c)}</div>")
        cls = " class=\"baseline\"" if s.is_baseline else ""
        rows.append(
            f"<tr{cls}><td>{e(s.label)}</td><td>{''.join(texts)}</td>"
            + _stat_cell(s.summary.get("kl"), 3)
            + _stat_cell(s.summary.get("hits_words"), 2, s.p_values.get("hits_words"))
            + _stat_cell(s.summary.get("hits_lens"), 2, s.p_values.get("hits_lens"))
            + _stat_cell(s.summary.get("fluency"), 2, s.p_values.get("fluency"))
            + _stat_cell(s.summary.get("repetition"), 2, s.p_values.get("repetition"))
            + "</tr>")
    return f"<h3>Prompt: <span class=\"text\">{shown}</span></h3><table>{head}{''.join(rows)}</table>"


def comparison_body(cmp, png: bytes | None) -> str:
    feats = ", ".join(str(f) for f in cmp.features)
    gen = ("greedy" if cmp.temperature == 0 else
           f"{cmp.samples} sample{'s' if cmp.samples != 1 else ''} per setting, temperature {cmp.temperature:g}, "
           f"top-p {cmp.top_p:g}, seed {cmp.seed if cmp.seed is not None else 0}")
    values = ", ".join(f"{v:g}" for v in cmp.values) if cmp.values is not None else "as given"
    parts = [f"<h1>Steering feature {e(feats)}: steered against unsteered</h1>",
             f"<p class=\"meta\">model <code>{e(cmp.model)}</code> · SAE <code>{e(cmp.sae)}</code> · hook "
             f"<code>{e(cmp.hook)}</code> · {e(cmp.mode)} mode · values {e(values)} · {e(gen)} · "
             f"{e(cmp.max_new_tokens)} new tokens</p>",
             "<p class=\"meta\"><b>KL</b> at each generated position is "
             "KL(p<sub>steered</sub> ‖ p<sub>unsteered</sub>) of the next-token distributions, both teacher-forced along the steered text (nats). <b>Hits</b>: "
             "occurrences of the feature's firing words / of the tokens it promotes (logit lens). <b>Fluency</b>: "
             "mean log-probability of the continuation under the unsteered model. Value 0 clamps the feature to 0;"
             " the unsteered row has no clamp at all."
             + (" ±: standard error over samples; <b>p</b>: paired sign-flip test against the unsteered samples "
                "(sample <i>i</i> uses the same random stream in every row)." if cmp.samples > 1 else "")
             + "</p>"]
    if cmp.targets is not None:
        def listing(items, sep: str, n: int = 24) -> str:
            more = f"{sep}… ({len(items) - n} more)" if len(items) > n else ""
            return (sep.join(items[:n]) + more) or "none"

        words = listing(cmp.targets["words"], ", ")
        lens = listing([repr(t) for t in cmp.targets["lens"]], " ")
        parts.append(f"<p class=\"meta\">On target — firing words: {e(words)}; promoted tokens: {e(lens)}</p>")
    if png:
        parts.append(f"<img class=\"plot\" alt=\"metrics against the clamp value\" src=\"{png_data_url(png)}\">")
    for p in cmp.prompts:
        parts.append(_prompt_table(cmp, p))
    if cmp.cards:
        parts.append("<h2>Feature cards</h2>")
        parts.extend(card_body(c) for c in cmp.cards)
    return "".join(parts)


def comparison_fragment(cmp, png: bytes | None) -> str:
    return _fragment(comparison_body(cmp, png))


def comparison_page(cmp, png: bytes | None) -> str:
    title = "saesteer compare: feature " + ", ".join(str(f) for f in cmp.features)
    return html_page(title, _fragment(comparison_body(cmp, png)))


def comparison_text(cmp, *, color: bool = False) -> str:
    """The comparison for a terminal: per prompt, one line per setting (means over samples), then texts."""
    import click

    def style(s: str, **kw) -> str:
        return click.style(s, **kw) if color else s

    out = [f"KL = KL(p_steered || p_unsteered) per generated position, mean (nats); hits = firing words / "
           "promoted tokens; fluency = mean log p under the unsteered model"]
    if cmp.samples > 1:
        out.append(f"means over {cmp.samples} samples per setting; p = paired sign-flip tests of firing-word /"
                   " promoted-token hits against the unsteered samples")
    for p in cmp.prompts:
        shown = p.prompt if p.prompt else "<BOS>"
        out.append("")
        out.append(style(f"Prompt {shown!r}", bold=True))
        width = max(10, *(len(s.label) for s in p.rows))
        hdr = f"  {'setting':<{width}}  {'KL':>6}  {'hits':>9}  {'fluency':>7}  {'rep':>5}"
        if cmp.samples > 1:
            hdr += f"  {'p(hits)':>11}"
        out.append(hdr + "  text")
        for s in p.rows:
            m = s.summary
            hw, hl = m["hits_words"].mean, m["hits_lens"].mean
            hits = "–" if hw is None else f"{hw:.3g}/{hl:.3g}"
            line = (f"  {s.label:<{width}}  {_fmt(m['kl'].mean, 3):>6}  {hits:>9}  {_fmt(m['fluency'].mean):>7}  "
                    f"{_fmt(m['repetition'].mean):>5}")
            if cmp.samples > 1:
                ps = "" if s.is_baseline else f"{_p(s.p_values.get('hits_words'))}/{_p(s.p_values.get('hits_lens'))}"
                line += f"  {ps:>11}"
            first = s.continuations[0].text if s.continuations else ""
            out.append(line + "  " + (style(_show(first), bold=True) if not s.is_baseline else _show(first)))
            for c in s.continuations[1:]:
                out.append(f"  {'':<{width}}  {'#' + str(c.sample):>6}  {'':>9}  {'':>7}  {'':>5}"
                           + (f"  {'':>11}" if cmp.samples > 1 else "") + "  " + _show(c.text))
    return "\n".join(out)
