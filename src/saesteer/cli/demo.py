"""``saesteer demo``: the practical session's walkthrough, one heading per step, readable output."""

from __future__ import annotations

import shlex

import click

from saesteer import assets
from saesteer.defaults import DEFAULT_MODEL, DEFAULT_SAE
from saesteer.io import atomic_write_text, escape_text, printable
from saesteer.steerer import Steerer


def _heading(n: int, title: str) -> None:
    click.echo()
    click.echo(click.style(f"== Step {n}: {title}", bold=True, fg="cyan"))


def default_prompt(st: Steerer) -> str:
    """A prompt in the model's own style: a story opening for the embedded TinyStories model."""
    return assets.EMBEDDED_PROMPT if assets.is_embedded(st.lm.name) else "Happiness is"


def next_steps_hint(st: Steerer) -> str:
    """The closing hint, with the --model/--sae/--hook this session ran on (unless they are the defaults)."""
    args = ""
    if (st.lm.name, st.sae_name) != (DEFAULT_MODEL, DEFAULT_SAE):
        args = f" --model {shlex.quote(st.lm.name)} --sae {shlex.quote(str(st.sae_name))}"
        if st.sae is not None and st.hook_name != st.sae.hook_name:
            args += f" --hook {st.hook_name}"
    stop = min(st.sae.d_sae, 1024) if st.sae is not None else 1024
    return (f"Next: `saesteer sweep{args} --features 0:{stop} --out sweep/` explores features at scale,"
            f" and `saesteer compare{args} --prompt ...` puts steered and unsteered text side by side.")


def run_demo(st: Steerer, *, feature: int | None, value: float, prompt: str | None, out: str,
             n_batch: int = 8) -> None:
    sae = st._need_sae()
    prompt = prompt or default_prompt(st)
    _heading(0, "load a model and an SAE")
    click.echo(f"model {st.lm.name} ({sum(p.numel() for p in st.model.parameters()):,} parameters)")
    click.echo(f"SAE   {st.sae_name or 'object'}: {sae}")

    _heading(1, f"record the activation at {st.hook_name}")
    run = st.run(prompt)
    click.echo(f"prompt tokens {run.prompt_tokens}; activation shape {tuple(run.activation.shape)}")

    _heading(2, f"run {prompt!r}: next token and activation")
    act = run.activation[-1]
    click.echo(f"next predicted token: {run.next_token!r} (id {run.next_token_id})")
    click.echo(f"activation at the last position: norm {float(act.norm()):.3f}, first values "
               + ", ".join(f"{float(v):.3f}" for v in act[:6]))
    rest = run.activation[1:] if len(run.prompt_tokens) > 1 else run.activation
    click.echo(f"mean norm over the {rest.shape[0]} tokens after BOS: {float(rest.norm(dim=-1).mean()):.3f}"
               " (the 'activation norm' that `saesteer reconstruct` reports)")

    _heading(3, "reconstruct it with the SAE")
    rec = st.reconstruct(prompt)
    s = rec.stats
    click.echo(f"MSE {s.mse:.5f} | variance explained {s.variance_explained:.3f} | cosine {s.cosine:.3f} | L0 {s.l0:.1f}")
    click.echo("most active features: " + ", ".join(f"{f} ({v:.2f})" for f, v in rec.top_features[:5]))
    if feature is None:
        feature = rec.top_features[0][0] if rec.top_features else 0
    sae.check_feature(feature)

    _heading(4, "generate 10 tokens greedily")
    plain = st.generate(prompt)
    click.echo(printable(f"{prompt}{plain.text}"))

    _heading(5, "edit the activation during generation (multiply by -10)")
    edited = st.generate(prompt, edit=lambda a: a * -10)
    click.echo(printable(f"{prompt}{edited.text}"))

    _heading(6, f"clamp feature {feature} to {value}")
    for mode in ("delta", "reconstruct"):
        g = st.generate(prompt, clamps={feature: value}, mode=mode)
        click.echo(printable(f"[{mode:11s}] {prompt}{g.text}"))

    _heading(7, f"generate from BOS alone with feature {feature} clamped")
    click.echo(printable(f"unsteered: <BOS>{st.generate(None).text}"))
    click.echo(printable(f"steered:   <BOS>{st.generate(None, clamps={feature: value}).text}"))

    _heading(8, f"a batch of {n_batch} BOS-only rows, sampled (temperature 1, seed 0)")
    for g in st.generate_many([None] * n_batch, clamps={feature: value}, temperature=1.0, seed=0):
        click.echo(f"  <BOS>{g.text!r}")

    _heading(9, f"a different feature in each row (features {feature}..{feature + n_batch - 1}), saved to {out}")
    feats = [f for f in range(feature, feature + n_batch) if f < sae.d_sae]
    results = st.batch_features(feats, value)

    atomic_write_text(out, "".join(f"{f}\t{escape_text(g.text)}\n" for f, g in zip(feats, results)))
    for f, g in zip(feats, results):
        click.echo(f"  {f:>6}  {g.text!r}")
    click.echo()
    click.echo(next_steps_hint(st))
