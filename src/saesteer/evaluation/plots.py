"""Plots of a comparison's metrics against the clamp value, as PNG bytes.

matplotlib's Agg canvas is used directly (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no window,
no display needed, and the user's own matplotlib backend (e.g. in a notebook) is left alone.
"""

from __future__ import annotations

import io
import math

from saesteer.evaluation.stats import METRIC_LABELS

PANELS = ("kl", "hits_words", "hits_lens", "fluency", "repetition", "score")
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _short(prompt: str | None, n: int = 28) -> str:
    if not prompt:
        return "<BOS>"
    s = " ".join(prompt.split())
    return repr(s if len(s) <= n else s[:n - 1] + "…")


def comparison_plot_png(cmp, *, dpi: int = 100) -> bytes:
    """One panel per metric (mean over samples, error bars: standard error), one line per prompt; the
    unsteered baseline is the dashed line of the same colour (band: its standard error)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings0 = cmp.prompts[0].settings if cmp.prompts else []
    numeric = bool(settings0) and all(s.value is not None for s in settings0) and len(
        {s.value for s in settings0}) == len(settings0)
    values = [s.value for s in settings0] if numeric else None
    fig = Figure(figsize=(12, 6.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    feats = ", ".join(str(f) for f in cmp.features)
    title = f"feature {feats} at {cmp.hook} ({cmp.mode} mode)"
    if cmp.samples > 1:
        title += f", {cmp.samples} samples per setting (T={cmp.temperature:g}, seed {cmp.seed})"
    fig.suptitle(title, fontsize=12)
    for ax, metric in zip(axes, PANELS):
        _panel(ax, metric, cmp, values, settings0)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="#555", ls="--", lw=1))
        labels.append("unsteered (same colour)")
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _panel(ax, metric: str, cmp, values: list[float] | None, settings0) -> None:
    """One metric's panel: a line per prompt against the clamp ``values`` (None: one tick per setting, labelled),
    the prompt's unsteered baseline dashed in the same colour."""
    xs = values if values is not None else list(range(len(settings0)))
    ax.set_title(METRIC_LABELS[metric], fontsize=10)
    ax.grid(True, alpha=0.3)
    drawn = False
    for p_i, p in enumerate(cmp.prompts):
        color = _COLORS[p_i % len(_COLORS)]
        stats = [s.summary.get(metric) for s in p.settings]
        ys = [st.mean if st is not None else None for st in stats]
        if all(y is None for y in ys):
            continue
        pts = [(x, y, (st.se or 0.0)) for x, y, st in zip(xs, ys, stats) if y is not None]
        ax.errorbar([q[0] for q in pts], [q[1] for q in pts], yerr=[q[2] for q in pts], color=color,
                    marker="o", ms=4, lw=1.5, capsize=3, label=_short(p.prompt))
        drawn = True
        b = p.baseline.summary.get(metric)
        if b is not None and b.mean is not None and metric != "kl":
            ax.axhline(b.mean, color=color, ls="--", lw=1, alpha=0.8)
            if b.se:
                ax.axhspan(b.mean - b.se, b.mean + b.se, color=color, alpha=0.08, lw=0)
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if drawn and math.isfinite(lo) and math.isfinite(hi) and hi - lo < 1e-9 * max(1.0, abs(hi)):
        ax.set_ylim(lo - 1.0, hi + 1.0)  # a constant metric: show its value, not round-off
    if not drawn:
        ax.text(0.5, 0.5, "not measured\n(no feature facts)", ha="center", va="center", transform=ax.transAxes,
                color="#888")
    if values is not None:
        ax.set_xlabel("clamp value", fontsize=9)
        if 0 >= min(xs) and 0 <= max(xs):
            ax.axvline(0, color="#999", lw=0.8, alpha=0.6)
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels([s.label for s in settings0], rotation=20, fontsize=8)
    ax.tick_params(labelsize=8)
