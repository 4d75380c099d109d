"""Core commands: generate, reconstruct, batch, demo."""

from __future__ import annotations

import click

from saesteer.cli.demo import run_demo
from saesteer.cli.paths import OutputFile
from saesteer.cli.options import build_steerer, echo_json, model_options
from saesteer.errors import SaesteerError
from saesteer.io import atomic_write_text, escape_text, printable
from saesteer.strength import DEFAULT_MULTIPLE, feature_scale
from saesteer.steering.clamp import MODE_HELP, MODES, FeatureClamp, parse_clamp


def parse_range(text: str, limit: int) -> range:
    """``START:STOP`` (or ``all``) -> range, validated against ``[0, limit)``."""
    if text == "all":
        return range(limit)
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        r = range(int(start) if start else 0, int(stop) if stop else limit)
    except ValueError:
        raise SaesteerError(f"bad feature range {text!r}; write START:STOP, e.g. 0:64, or 'all'") from None
    if r.start < 0 or r.stop > limit or len(r) == 0:
        raise SaesteerError(f"feature range {text!r} must be a non-empty part of [0, {limit})")
    return r


def generation_options(func):
    func = click.option("--max-new-tokens", default=10, show_default=True, type=click.IntRange(0, 4096))(func)
    func = click.option("--temperature", default=0.0, show_default=True, type=float,
                        help="0 = greedy (argmax); above 0 samples.")(func)
    func = click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus sampling threshold.")(func)
    func = click.option("--seed", default=None, type=int,
                        help="Seed for sampling (default: a fresh one, reported so the text can be reproduced).")(func)
    func = click.option("--mode", type=click.Choice(MODES), default=MODES[0], show_default=True, help=MODE_HELP)(func)
    return func


def prompt_file_option(func):
    return click.option("--prompt-file", "prompt_file", default=None, type=click.Path(exists=True, dir_okay=False),
                        help="UTF-8 text file of prompts, one per line (blank lines skipped).")(func)


def _names_a_file(text: str) -> bool:
    """Whether ``text`` is the path of an existing file (False for text no path can be: too long, NUL...)."""
    from pathlib import Path

    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str | None]:
    """The prompts of a command: ``--prompt`` (None = BOS alone) or each line of ``--prompt-file``."""
    from pathlib import Path

    if prompt_file is None:
        if prompt and _names_a_file(prompt):
            click.echo(f"note: --prompt {prompt!r} is used as text; for a file of prompts pass --prompt-file",
                       err=True)
        return [prompt]
    if prompt is not None:
        raise SaesteerError("pass --prompt or --prompt-file, not both")
    lines = [line for line in Path(prompt_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SaesteerError(f"{prompt_file} holds no prompt; write one prompt per line")
    return lines


@click.command()
@model_options
@click.option("--prompt", default=None, help="Text to continue; without it, generation starts from BOS alone.")
@prompt_file_option
@click.option("--clamp", "clamps", multiple=True, metavar="FEATURE=VALUE", help="Clamp an SAE feature (repeatable).")
@generation_options
@click.option("--no-bos", is_flag=True, help="Do not put the BOS token in front of the prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (a list of them with --prompt-file).")
def generate(model, sae, hook, device, prompt, prompt_file, clamps, max_new_tokens, temperature, top_p, seed, mode,
             no_bos, as_json):
    """Continue a prompt (or BOS alone, or each line of a file), optionally with SAE features clamped."""
    parsed = [parse_clamp(c) for c in clamps]
    prompts = read_prompts(prompt, prompt_file)
    st = build_steerer(model, sae, hook, device)
    results = st.generate_many(prompts, clamps=parsed or None, mode=mode, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, prepend_bos=not no_bos)
    if as_json:
        objs = [{
            "model": st.lm.name, "sae": st.sae_name or sae, "hook": st.hook_name, "mode": mode, "prompt": p,
            "clamps": [c.to_dict() for c in parsed], "prompt_tokens": r.prompt_tokens,
            "tokens": r.tokens, "text": r.text,
            "temperature": temperature, "top_p": top_p, "seed": r.seed, "max_new_tokens": max_new_tokens,
        } for p, r in zip(prompts, results)]
        echo_json(objs if prompt_file else objs[0])
        return
    for p, r in zip(prompts, results):
        shown = printable(p) if p else "<BOS>"
        click.echo(click.style(shown, bold=True) + printable(r.text))
    if temperature > 0:
        seed_used = results[0].seed
        click.echo(f"(sampled with seed {seed_used}: pass --seed {seed_used} to get this text again)", err=True)


@click.command()
@model_options
@click.option("--prompt", required=True, help="Text whose activations to reconstruct.")
@click.option("--top", "top_n", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
def reconstruct(model, sae, hook, device, prompt, top_n, as_json):
    """Record the activation at the SAE's hook, reconstruct it, and report the quality."""
    st = build_steerer(model, sae, hook, device)
    report = st.reconstruct(prompt, top_n=top_n)
    if as_json:
        echo_json(report.to_dict())
        return
    s = report.stats
    click.echo(f"hook                {report.hook}")
    click.echo(f"next token          {report.next_token!r}")
    click.echo(f"activation norm     {s.activation_norm:.4f}   (mean over {s.n_tokens} tokens, BOS excluded)")
    click.echo(f"MSE                 {s.mse:.6f}")
    click.echo(f"variance explained  {s.variance_explained:.4f}")
    click.echo(f"cosine similarity   {s.cosine:.4f}")
    click.echo(f"L0                  {s.l0:.1f}")
    click.echo("top features at the last token: " + ", ".join(f"{f} ({v:.2f})" for f, v in report.top_features))


@click.command()
@model_options
@click.option("--features", "features", required=True, help="START:STOP; row b clamps feature START + offset + b.")
@click.option("--offset", default=0, show_default=True, type=int, help="Added to every feature index.")
@click.option("--value", default=None, type=float,
              help="Absolute clamp value for every feature (default: --strength x each feature's max activation).")
@click.option("--strength", default=DEFAULT_MULTIPLE, show_default=True, type=float,
              help="Without --value: clamp each feature to this multiple of its max activation on reference text.")
@click.option("--prompt", default=None, help="Prompt for every row (default: BOS alone).")
@click.option("--prompt-file", "prompt_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Prompts, one per line: every feature on every prompt, FEATURE<TAB>PROMPT<TAB>TEXT per line.")
@generation_options
@click.option("--batch-size", default=None, type=click.IntRange(1, 1 << 20), help="Rows per forward (default: chosen from memory).")
@click.option("--out", "out", required=True, type=OutputFile(), help="Output .txt: FEATURE<TAB>TEXT per line (its folder must exist).")
def batch(model, sae, hook, device, features, offset, value, strength, prompt, prompt_file, max_new_tokens,
          temperature, top_p, seed, mode, batch_size, out):
    """One row per feature, each clamped to VALUE (or to STRENGTH x its own max activation), from BOS (or a
    prompt); save one line per feature."""
    if value is not None:
        FeatureClamp(0, value)  # validates the value
    st = build_steerer(model, sae, hook, device)
    st.check_prompt(prompt, max_new_tokens=max_new_tokens)  # before the scales are measured
    r = parse_range(features, st.need_sae().d_sae)
    feats = [f + offset for f in r]
    for f in feats:
        st.sae.check_feature(f)
    if value is None:
        scale = feature_scale(st, feats, progress=True)
        values = [scale.value(f, strength) if scale.max_activation[f] > 0 else 0.0 for f in feats]
        click.echo(f"values: {strength:g} x each feature's max activation on {scale.source}"
                   f" ({min(values):.3g} to {max(values):.3g}; --value V for one absolute value)", err=True)
    else:
        values = [value] * len(feats)
    prompts = read_prompts(prompt, prompt_file)
    lines, results = [], []
    for p in prompts:
        rows = st.batch_features(feats, values, prompt=p, mode=mode, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
        column = f"{escape_text(p)}\t" if prompt_file else ""
        lines += [f"{f}\t{column}{escape_text(g.text)}" for f, g in zip(feats, rows)]
        results += rows
    atomic_write_text(out, "\n".join(lines) + "\n")
    sampled = f" (sampled with seed {results[0].seed})" if results and temperature > 0 else ""
    click.echo(f"wrote {len(lines)} sentences to {out}{sampled}")


@click.command()
@model_options
@click.option("--feature", default=None, type=int, help="Feature to clamp in the steering steps (default: the most active one).")
@click.option("--value", default=None, type=float,
              help="Absolute clamp value in the steering steps (default: --strength x each feature's max activation).")
@click.option("--strength", default=DEFAULT_MULTIPLE, show_default=True, type=float,
              help="Clamp to this multiple of each feature's max activation on reference text (without --value).")
@click.option("--prompt", default=None,
              help="Prompt of the session (default: 'Happiness is'; 'Once upon a time' on stories260K).")
@click.option("--out", "out", default="demo_sentences.txt", show_default=True, type=OutputFile(),
              help="Where step 9 saves its sentences.")
def demo(model, sae, hook, device, feature, value, strength, prompt, out):
    """Walk through the practical session, step by step."""
    run_demo(build_steerer(model, sae, hook, device), feature=feature, value=value, strength=strength,
             prompt=prompt, out=out)


COMMANDS = [generate, reconstruct, batch, demo]
