"""``saesteer compare`` (steered against unsteered, strength sweeps, samples) and ``saesteer feature`` (a card)."""

from __future__ import annotations

from pathlib import Path

import click

from saesteer.cli.core_commands import generation_options, read_prompts
from saesteer.cli.options import build_steerer, echo_json, model_options
from saesteer.cli.paths import OutputFile
from saesteer.errors import SaesteerError
from saesteer.evaluation.compare import compare as run_compare
from saesteer.evaluation.compare import parse_clamp_values, parse_feature_or_clamp
from saesteer.evaluation.feature_card import feature_card
from saesteer.evaluation.report import comparison_text
from saesteer.io import atomic_write_bytes
from saesteer.steering.clamp import MODES
from saesteer.strength import DEFAULT_MULTIPLE, DEFAULT_MULTIPLES, feature_scale


def reference_options(func):
    """Where feature facts (firing words, contexts) come from: ``--text FILE`` or text the model samples."""
    func = click.option("--reference-length", default=64, show_default=True, type=click.IntRange(1, 4096),
                        help="Tokens per reference sequence.")(func)
    func = click.option("--reference-samples", default=256, show_default=True, type=click.IntRange(1, 1 << 20),
                        help="Sequences the model samples as reference text (without --text).")(func)
    func = click.option("--text", "text_file", default=None, type=click.Path(dir_okay=False),
                        help="Reference text file for firing words and contexts (default: text the model samples"
                             " itself). Facts are cached under $SAESTEER_CACHE.")(func)
    return func


def _check_text(path):
    if path is not None and not Path(path).is_file():
        raise SaesteerError(f"reference text file not found: {path}")


def _relative_settings(st, pairs, values, relative, text_file, reference_samples, reference_length, *, quiet):
    """Turn multiples of each feature's max activation into clamp values (the default strength for a bare
    FEATURE is :data:`DEFAULT_MULTIPLE`); print each feature's scale."""
    feats = [f for f, _ in pairs]
    scale = feature_scale(st, feats, reference_text=text_file, reference_samples=reference_samples,
                          reference_length=reference_length, progress=not quiet)
    if values is not None:  # --relative --values: one multiple per setting; only one feature has one scale
        if len(set(feats)) != 1:
            raise SaesteerError("--relative --values needs a single --clamp feature (each feature has its own"
                                " scale); write --relative --clamp F=MULTIPLE for several")
        values = [scale.value(feats[0], m) for m in values]
    else:
        pairs = [(f, scale.value(f, DEFAULT_MULTIPLE if v is None else v) if (relative or v is None) else v)
                 for f, v in pairs]
    if not quiet:
        for f in dict.fromkeys(feats):
            click.echo(scale.describe(f), err=True)
    return pairs, values


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
@click.option("--values", "values_text", default=None, metavar="V1,V2,...",
              help="Strength sweep: one setting per value, each clamping every --clamp feature to it "
                   "(0 clamps to 0; the unsteered row is separate). A --clamp FEATURE with no value and no"
                   " --values is clamped to 2 x its max activation on the reference text.")
@click.option("--relative", is_flag=True,
              help="Read the values (--values, or FEATURE=VALUE) as multiples of each feature's max activation.")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Sampled continuations per setting (needs --temperature > 0); sample i uses the same "
                   "seeded random stream in every setting.")
@generation_options
@click.option("--no-bos", is_flag=True, help="Do not put the BOS token in front of the prompt.")
@reference_options
@click.option("--no-facts", is_flag=True, help="Skip feature facts: no on-target hits, no feature cards.")
@click.option("--out", "out", default=None, type=OutputFile(),
              help="Write a self-contained HTML report (and its plot as PNG beside it).")
@click.option("--plot", "plot", default=None, type=OutputFile(),
              help="Where to save the plot PNG (default: the report's name with .png).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare(model, sae, hook, device, prompts, prompt_file, clamps, values_text, relative, samples, max_new_tokens, temperature, top_p, seed,
            mode, no_bos, text_file, reference_samples, reference_length, no_facts, out, plot, as_json):
    """Continue prompts with and without features clamped, over a sweep of strengths, with metrics.

    \b
    saesteer compare --prompt "I went to the park" --clamp 123=20
    saesteer compare --prompt "I feel" --clamp 123 --values -20,-10,0,10,20 \\
        --samples 8 --temperature 1 --seed 0 --out report.html
    """
    values = parse_clamp_values(values_text)
    pairs = [parse_feature_or_clamp(c) for c in clamps]
    prompts = [*prompts, *(read_prompts(None, prompt_file) if prompt_file else [])]
    if values is not None and any(v is not None for _, v in pairs):
        click.echo("note: --values replaces the values given in --clamp", err=True)
    if samples > 1 and temperature == 0:
        raise SaesteerError("--samples above 1 needs sampling: pass --temperature > 0 (greedy continuations are"
                            " all the same)")
    _check_text(text_file)
    st = build_steerer(model, sae, hook, device)
    for p in prompts or [None]:  # before any work (feature facts, generation)
        st.check_prompt(p, max_new_tokens=max_new_tokens, prepend_bos=not no_bos)
    bare = values is None and any(v is None for _, v in pairs)
    if (bare or relative) and no_facts:
        f = next((f for f, v in pairs if v is None), pairs[0][0])
        raise SaesteerError(f"feature {f} has no clamp value and --no-facts leaves no scale to take one from;"
                            f" write --clamp {f}=VALUE, or drop --no-facts for 2 x its max activation")
    if bare or relative:
        pairs, values = _relative_settings(st, pairs, values, relative, text_file, reference_samples,
                                           reference_length, quiet=as_json)
    cmp = run_compare(st, list(prompts) or [None], pairs, values=values, samples=samples, temperature=temperature,
                      top_p=top_p, seed=seed, max_new_tokens=max_new_tokens, mode=mode, prepend_bos=not no_bos,
                      facts=False if no_facts else None, reference_text=text_file,
                      reference_samples=reference_samples, reference_length=reference_length,
                      progress=not as_json)
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
@click.option("--values", "values_text", default=None, metavar="V1,V2,...",
              help="Absolute clamp values of the steered samples [default: -2,1,2,4 x the feature's max activation].")
@click.option("--relative", is_flag=True, help="Read --values as multiples of the feature's max activation.")
@click.option("--prompt", default=None, help="Prompt of the steered samples (default: BOS alone).")
@click.option("--max-new-tokens", default=20, show_default=True, type=click.IntRange(0, 4096))
@click.option("--mode", type=click.Choice(MODES), default="delta", show_default=True,
              help="delta / reconstruct clamp the feature to each value; add adds value x its decoder direction.")
@reference_options
@click.option("--top", "top_n", default=10, show_default=True, type=click.IntRange(1, 100),
              help="Tokens and words listed per row.")
@click.option("--contexts", "n_contexts", default=8, show_default=True, type=click.IntRange(0, 32),
              help="Contexts where the feature is most active.")
@click.option("--out", "out", default=None, type=OutputFile(), help="Also write the card as HTML.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def feature(model, sae, hook, device, feature, values_text, relative, prompt, max_new_tokens, mode, text_file,
            reference_samples, reference_length, top_n, n_contexts, out, as_json):
    """A feature card: decoder norm, logit lens, firing words, steered samples, top contexts."""
    values = parse_clamp_values(values_text)
    _check_text(text_file)
    st = build_steerer(model, sae, hook, device)
    st.sae.check_feature(feature)
    st.check_prompt(prompt, max_new_tokens=max_new_tokens)  # before the feature facts are computed
    if values is None or relative:
        multiples = values if values is not None else list(DEFAULT_MULTIPLES)
        scale = feature_scale(st, [feature], reference_text=text_file, reference_samples=reference_samples,
                              reference_length=reference_length, progress=not as_json)
        values = [scale.value(feature, m) for m in multiples]
        if not as_json:
            click.echo(f"{scale.describe(feature)}; steered samples at " + ", ".join(
                f"{m:g} x = {v:.4g}" for m, v in zip(multiples, values)) + " (--values V1,V2 for absolute values)")
    card = feature_card(st, feature, values=values, prompt=prompt, max_new_tokens=max_new_tokens, mode=mode,
                        reference_text=text_file, reference_samples=reference_samples,
                        reference_length=reference_length, n_tokens=top_n, n_contexts=n_contexts,
                        progress=not as_json)
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
