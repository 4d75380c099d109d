"""``saesteer demo``: the practical session's walkthrough, one heading per step, readable output."""

from __future__ import annotations

import shlex

import click

from saesteer import assets
from saesteer.defaults import DEFAULT_MODEL, DEFAULT_SAE
from saesteer.io import atomic_write_text, escape_text, printable
from saesteer.steerer import Steerer
from saesteer.strength import DEFAULT_MULTIPLE, feature_scale


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


def run_demo(st: Steerer, *, feature: int | None, value: float | None, prompt: str | None, out: str,
             strength: float = DEFAULT_MULTIPLE, n_batch: int = 8) -> None:
    """The session's steps 0-9 on ``st``; ``value`` None clamps to ``strength`` x each feature's peak."""
    sae = st.need_sae()
    prompt = prompt or default_prompt(st)
    _heading(0, "load a model and an SAE")
    click.echo(f"model {st.lm.name} ({sum(p.numel() for p in st.model.parameters()):,} parameters)")
    click.echo(f"SAE   {st.sae_name or 'object'}: {sae}")
    feature = _record_and_reconstruct(st, prompt, feature)
    feats = [f for f in range(feature, feature + n_batch) if f < sae.d_sae]
    values = _choose_values(st, feats, value, strength)
    _steer(st, prompt, feature, values[feature], n_batch)

    _heading(9, f"a different feature in each row (features {feats[0]}..{feats[-1]}), saved to {out}")
    results = st.batch_features(feats, [values[f] for f in feats])
    atomic_write_text(out, "".join(f"{f}\t{escape_text(g.text)}\n" for f, g in zip(feats, results)))
    for f, g in zip(feats, results):
        click.echo(f"  {f:>6} = {values[f]:<8.4g} {g.text!r}")
    click.echo()
    click.echo(next_steps_hint(st))


def _record_and_reconstruct(st: Steerer, prompt: str, feature: int | None) -> int:
    """Steps 1-3; return the feature to steer (the most active one at the last token unless given)."""
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
    st.sae.check_feature(feature)
    return feature


def _choose_values(st: Steerer, feats: list[int], value: float | None, strength: float) -> dict[int, float]:
    """Clamp value per feature: ``value`` for all, else ``strength`` x each one's peak on reference text."""
    click.echo(f"finding each feature's scale on reference text (once; cached under $SAESTEER_CACHE)")
    scale = feature_scale(st, feats, progress=True)
    click.echo(scale.describe(feats[0], None if value is not None else strength))
    if value is not None:
        click.echo(f"clamping to the absolute value {value:g} (--value); without --value the demo clamps to"
                   f" {strength:g} x each feature's max activation")
        return {f: float(value) for f in feats}
    click.echo(f"clamping each feature to {strength:g} x its own max activation (--strength); --value V clamps"
               " to an absolute value instead")
    return {f: scale.value(f, strength) if scale.max_activation[f] > 0 else 0.0 for f in feats}


def _steer(st: Steerer, prompt: str, feature: int, value: float, n_batch: int) -> None:
    """Steps 4-8: plain and edited generation, then the feature clamped in several ways."""
    _heading(4, "generate 10 tokens greedily")
    click.echo(printable(f"{prompt}{st.generate(prompt).text}"))

    _heading(5, "edit the activation during generation (multiply by -10)")
    click.echo(printable(f"{prompt}{st.generate(prompt, edit=lambda a: a * -10).text}"))

    _heading(6, f"clamp feature {feature} to {value:.4g}")
    for mode in ("delta", "reconstruct"):
        g = st.generate(prompt, clamps={feature: value}, mode=mode)
        click.echo(printable(f"[{mode:11s}] {prompt}{g.text}"))

    _heading(7, f"generate from BOS alone with feature {feature} clamped to {value:.4g}")
    click.echo(printable(f"unsteered: <BOS>{st.generate(None).text}"))
    click.echo(printable(f"steered:   <BOS>{st.generate(None, clamps={feature: value}).text}"))

    _heading(8, f"a batch of {n_batch} BOS-only rows, sampled (temperature 1, seed 0)")
    for g in st.generate_many([None] * n_batch, clamps={feature: value}, temperature=1.0, seed=0):
        click.echo(f"  <BOS>{g.text!r}")
