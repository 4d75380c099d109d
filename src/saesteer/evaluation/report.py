"""Rendering comparisons and feature cards: self-contained HTML (for files and notebooks) and plain text.

The HTML comes from the Jinja2 templates of :mod:`saesteer.evaluation.templating` (``templates/``), with the
stylesheet the web app uses too, inlined: no network, no scripts, every piece of model or user text escaped.
"""

from __future__ import annotations

import html

from saesteer.evaluation.templating import KL_SATURATION, fmt, fmt_p, fragment, page, png_data_url, render
from saesteer.evaluation.templating import shown as one_line

__all__ = ["KL_SATURATION", "card_body", "card_fragment", "card_page", "card_text", "comparison_body",
           "comparison_fragment", "comparison_page", "comparison_text", "e", "png_data_url"]


def e(value) -> str:
    """HTML-escape anything (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------- feature cards
def reference_text(ref: dict) -> str:
    """Where a card's reference text came from, in words."""
    if not ref:
        return "unknown"
    if ref.get("source") == "sampled":
        return (f"{ref.get('sequences')} sequences of {ref.get('length')} tokens the model sampled from BOS "
                f"(temperature {ref.get('temperature', 1)}, seed {ref.get('seed')})")
    return f"{ref.get('source')} ({ref.get('sequences')} chunks of {ref.get('length')} tokens)"


def card_body(card) -> str:
    return str(render("card.html.j2", card=card, reference=reference_text(card.reference)))


def card_fragment(card) -> str:
    return fragment(card_body(card))


def card_page(card) -> str:
    return page(f"saesteer feature {card.feature}", card_body(card))


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
    out += wrap("reference text", reference_text(card.reference))
    if card.samples:
        shown = card.prompt if card.prompt else "<BOS>"
        out.append("")
        out.append(style(f"Steered samples of {shown!r} ({card.mode} mode)", bold=True))
        out.append(f"  {'unsteered':>10}  {one_line(card.unsteered.shown)}")
        for s in card.samples:
            out.append(f"  {s.value:>10g}  {one_line(s.shown)}")
    out.append("")
    out.append(style("Where it is most active (active token in [[ ]])", bold=True))
    if not card.contexts:
        out.append("  it never fired on the reference text")
    for c in card.contexts:
        mark = style(f"[[{one_line(c.token)}]]", bold=True, fg="yellow")
        out.append(f"  {c.activation:>8.3f}  {one_line(c.before)}{mark}{one_line(c.after)}")
    return "\n".join(out)


# --------------------------------------------------------------------------- comparisons
def _listing(items, sep: str, n: int = 24) -> str:
    more = f"{sep}… ({len(items) - n} more)" if len(items) > n else ""
    return (sep.join(items[:n]) + more) or "none"


def comparison_body(cmp, png: bytes | None) -> str:
    gen = ("greedy" if cmp.temperature == 0 else
           f"{cmp.samples} sample{'s' if cmp.samples != 1 else ''} per setting, temperature {cmp.temperature:g}, "
           f"top-p {cmp.top_p:g}, seed {cmp.seed if cmp.seed is not None else 0}")
    targets = None
    if cmp.targets is not None:
        targets = {"words": _listing(cmp.targets["words"], ", "),
                   "lens": _listing([repr(t) for t in cmp.targets["lens"]], " ")}
    return str(render("comparison.html.j2", cmp=cmp, png=png, generation=gen, targets=targets,
                      features=", ".join(str(f) for f in cmp.features),
                      values=", ".join(f"{v:g}" for v in cmp.values) if cmp.values is not None else "as given",
                      unswept=", ".join(str(f) for f in cmp.features
                                        if f not in {r["feature"] for r in cmp.sweep_results or ()}),
                      cards=[render("card.html.j2", card=c, reference=reference_text(c.reference))
                             for c in (cmp.cards or ())]))


def comparison_fragment(cmp, png: bytes | None) -> str:
    return fragment(comparison_body(cmp, png))


def comparison_page(cmp, png: bytes | None) -> str:
    return page("saesteer compare: feature " + ", ".join(str(f) for f in cmp.features), comparison_body(cmp, png))


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
            line = (f"  {s.label:<{width}}  {fmt(m['kl'].mean, 3):>6}  {hits:>9}  {fmt(m['fluency'].mean):>7}  "
                    f"{fmt(m['repetition'].mean):>5}")
            if cmp.samples > 1:
                ps = "" if s.is_baseline else f"{fmt_p(s.p_values.get('hits_words'))}/{fmt_p(s.p_values.get('hits_lens'))}"
                line += f"  {ps:>11}"
            first = s.continuations[0].text if s.continuations else ""
            out.append(line + "  " + (style(one_line(first), bold=True) if not s.is_baseline else one_line(first)))
            for c in s.continuations[1:]:
                out.append(f"  {'':<{width}}  {'#' + str(c.sample):>6}  {'':>9}  {'':>7}  {'':>5}"
                           + (f"  {'':>11}" if cmp.samples > 1 else "") + "  " + one_line(c.text))
    return "\n".join(out + _sweep_lines(cmp))


def _sweep_lines(cmp) -> list[str]:
    """The features' results in the sweep (``--sweep``), as ``saesteer top`` ranks them."""
    if cmp.sweep_results is None:
        return ["", "steer, word rank, readback rank: not measured (they need a sweep: --sweep DIR)"]
    out = ["", f"In the sweep {cmp.sweep} (as saesteer top ranks them; ranks: 1 = above every other feature's text)",
           f"  {'feature':>7}  {'value':>7}  {'steer':>6}  {'words':>6}  {'readback':>8}  text"]
    for r in cmp.sweep_results:
        out.append(f"  {r['feature']:>7}  {fmt(r['value'], 3):>7}  {fmt(r['steer'], 3):>6}  {fmt(r['word_rank'], 3):>6}"
                   f"  {fmt(r['readback_rank'], 3):>8}  {one_line(r['text'])}")
    return out
