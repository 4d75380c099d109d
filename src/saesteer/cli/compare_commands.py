"""``saesteer compare`` (steered against unsteered, strength sweeps, samples) and ``saesteer feature`` (a card)."""

from __future__ import annotations

from pathlib import Path

import click

from saesteer.cli.config_options import config_from, config_options
from saesteer.cli.core_commands import read_prompts
from saesteer.cli.options import build_steerer, echo_json, model_options
from saesteer.cli.paths import OutputFile
from saesteer.errors import SaesteerError
from saesteer.evaluation.compare import compare as run_compare
from saesteer.evaluation.compare import parse_feature_or_clamp
from saesteer.evaluation.compare_config import CompareConfig, FeatureCardConfig
from saesteer.evaluation.feature_card import feature_card, scaled_values
from saesteer.evaluation.report import comparison_text
from saesteer.io import atomic_write_bytes
from saesteer.strength import relative_settings


def _png_path(out: str, plot: str | None) -> str:
    if plot:
        return plot
    p = Path(out)
    return str(p.with_suffix(".png") if p.suffix.lower() != ".png" else p.with_name(p.stem + ".plot.png"))


@click.command()
@model_options
@click.option("--prompt", "prompts", multiple=True,
              help="Text to continue (repeatable); without it, generation starts from BOS alone.")
@click.option("--prompt-file", "prompt_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="More prompts, one per line (blank lines skipped).")
@click.option("--clamp", "clamps", multiple=True, required=True, metavar="FEATURE=VALUE",
              help="Feature to clamp (repeatable). With --values, FEATURE alone is enough.")
@config_options(CompareConfig)
@click.option("--out", "out", default=None, type=OutputFile(),
              help="Write a self-contained HTML report (and its plot as PNG beside it).")
@click.option("--plot", "plot", default=None, type=OutputFile(),
              help="Where to save the plot PNG (default: the report's name with .png).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare(model, sae, hook, device, prompts, prompt_file, clamps, out, plot, as_json, **options):
    """Continue prompts with and without features clamped, over a sweep of strengths, with metrics.

    \b
    saesteer compare --prompt "I went to the park" --clamp 123=20
    saesteer compare --prompt "I feel" --clamp 123 --values -20,-10,0,10,20 \\
        --samples 8 --temperature 1 --seed 0 --out report.html
    """
    config = config_from(CompareConfig, options)
    pairs = [parse_feature_or_clamp(c) for c in clamps]
    prompts = [*prompts, *(read_prompts(None, prompt_file) if prompt_file else [])]
    if config.values is not None and any(v is not None for _, v in pairs):
        click.echo("note: --values replaces the values given in --clamp", err=True)
    st = build_steerer(model, sae, hook, device)
    for p in prompts or [None]:  # before any work (feature facts, generation)
        st.check_prompt(p, max_new_tokens=config.max_new_tokens, prepend_bos=config.prepend_bos)
    bare = config.values is None and any(v is None for _, v in pairs)
    if (bare or config.relative) and not config.use_facts:
        f = next((f for f, v in pairs if v is None), pairs[0][0])
        raise SaesteerError(f"feature {f} has no clamp value and --no-facts leaves no scale to take one from;"
                            f" write --clamp {f}=VALUE, or drop --no-facts for 2 x its max activation")
    if bare or config.relative:  # the values in each feature's own units, said before the work starts
        pairs, values, scale = relative_settings(st, pairs, config.values, relative=config.relative,
                                                 progress=not as_json, **config.scale_keywords())
        if not as_json:
            for f in dict.fromkeys(f for f, _ in pairs):
                click.echo(scale.describe(f), err=True)
        config = config.replace(values=values, relative=False)
    cmp = run_compare(st, list(prompts) or [None], pairs, config, progress=not as_json)
    written = []
    if out or plot:
        png_path = _png_path(out or plot, plot)
        if out:
            cmp.save_html(out, png_path=png_path)
            written += [out, png_path]
        else:
            atomic_write_bytes(png_path, cmp.plot_png())
            written.append(png_path)
    if as_json:
        d = cmp.to_dict()
        d["written"] = written
        echo_json(d)
        return
    click.echo(comparison_text(cmp, color=True))
    for path in written:
        click.echo(f"wrote {path}", err=True)


@click.command()
@model_options
@click.argument("feature", type=int)
@config_options(FeatureCardConfig)
@click.option("--out", "out", default=None, type=OutputFile(), help="Also write the card as HTML.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def feature(model, sae, hook, device, feature, out, as_json, **options):
    """A feature card: decoder norm, logit lens, firing words, steered samples, top contexts."""
    config = config_from(FeatureCardConfig, options)
    st = build_steerer(model, sae, hook, device)
    st.sae.check_feature(feature)
    st.check_prompt(config.prompt, max_new_tokens=config.max_new_tokens)  # before the feature facts are computed
    if config.values is None or config.relative:  # the command's default: multiples of the max activation
        multiples, values, scale = scaled_values(st, feature, config.values, config, progress=not as_json)
        if not as_json:
            click.echo(f"{scale.describe(feature)}; steered samples at " + ", ".join(
                f"{m:g} x = {v:.4g}" for m, v in zip(multiples, values)) + " (--values V1,V2 for absolute values)")
        config = config.replace(values=values, relative=False)
    card = feature_card(st, feature, config, progress=not as_json)
    if out:
        card.save_html(out)
    if as_json:
        d = card.to_dict()
        d["written"] = [out] if out else []
        echo_json(d)
        return
    click.echo(card.to_text(color=True))
    if out:
        click.echo(f"wrote {out}", err=True)


COMMANDS = [compare, feature]
