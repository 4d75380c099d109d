"""Training commands: train-sae (a TopK SAE on a model's activations) and validate (the method on a real model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from saesteer.cli.config_options import config_from, config_options
from saesteer.cli.paths import OutputFolder
from saesteer.errors import SaesteerError
from saesteer.locks import FolderLock
from saesteer.models.loading import load_model
from saesteer.steering.values import check_value
from saesteer.training import collect_activations, train_topk_sae
from saesteer.training.config import DataConfig, TrainConfig
from saesteer.training.output import check_sae_folder, save_trained_sae
from saesteer.validation import REPORT_KEYS, ValidationConfig, validate as run_validation


@click.command("train-sae")
@click.option("--model", required=True,
              help="A local Hugging Face model directory (any family of the guide's table) or hub id.")
@click.option("--hook", required=True, help="Hook site, e.g. blocks.2.hook_resid_post.")
@config_options(TrainConfig)
@config_options(DataConfig)
@click.option("--device", default="cpu", show_default=True, help="Device the model runs on to collect activations.")
@click.option("--out", required=True, type=OutputFolder(),
              help="Folder for the SAE (SAELens format): new or empty, or an SAE folder with --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace the SAE already at --out (the whole folder, swapped in once the new one is complete).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_sae(model, hook, device, out, overwrite, quiet, **options):
    """Train a TopK SAE (OpenAI v5 recipe) on MODEL's activations at HOOK and save it to OUT.

    The SAE loads back with --sae OUT in every command. Same seed, same machine: same weights. OUT is checked
    before any work; an existing SAE there is replaced only with --overwrite, and as a whole.
    """
    data = config_from(DataConfig, options)
    cfg = config_from(TrainConfig, options, hook_name=hook)
    latents, k, seed = cfg.d_sae, cfg.k, cfg.seed
    if k > latents:
        raise SaesteerError(f"--k {k} is larger than --latents {latents}")

    # Held until the command ends: a second train-sae (or anything else that locks) on OUT is refused at once.
    check_sae_folder(out, overwrite=overwrite)  # refusals leave nothing behind, not even a lock file
    click.get_current_context().with_resource(FolderLock(out, what="SAE folder"))
    check_sae_folder(out, overwrite=overwrite)  # again, now that no other run can change it
    progress = not quiet
    started = time.perf_counter()
    lm = load_model(model, device=device)
    acts, held, source = collect_activations(lm, hook, data, seed=seed, progress=progress)
    collected = time.perf_counter()
    sae, stats = train_topk_sae(acts, cfg, eval_acts=held, progress=progress)
    sae.cfg.extra["model_name"] = lm.name
    info = {
        "model": lm.name, "hook": hook, "latents": latents, "k": k, "tokens": int(acts.shape[0]),
        "source": source, "seq_len": data.seq_len, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "seed": seed,
        "steps": stats.steps, "variance_explained": stats.variance_explained, "l0": stats.l0,
        "dead_fraction": stats.dead_fraction, "eval_tokens": stats.eval_tokens,
        "eval": "held-out" if held is not None else "training tokens",
        "collect_seconds": round(collected - started, 2), "train_seconds": round(stats.seconds, 2),
    }
    folder = save_trained_sae(sae, info, out, overwrite=overwrite)
    click.echo(f"saved {latents} latents (k={k}) at {hook} to {folder}: variance explained "
               f"{stats.variance_explained:.4f}, L0 {stats.l0:.1f}, dead {100 * stats.dead_fraction:.2f}% "
               f"({info['eval']}, {stats.eval_tokens} tokens); {acts.shape[0]} tokens, "
               f"{info['collect_seconds']:.0f}s collecting, {stats.seconds:.0f}s training", err=True)


_V = ValidationConfig()


def _csv(values) -> str:
    return ",".join(f"{x:g}" for x in values)


def parse_value_list(text: str) -> tuple[float, ...]:
    """``"2,3,4"`` -> (2.0, 3.0, 4.0); ``""`` -> ()."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SaesteerError(f"bad value list {text!r}; write numbers separated by commas, e.g. 2,3,4") from None
    return tuple(check_value(v, "value") for v in values)


@click.command()
@click.option("--model", default=_V.model, show_default=True,
              help="Local Hugging Face model directory (any family of the guide's table).")
@click.option("--hook", default=None, help="Hook site [default: blocks.{layers // 2}.hook_resid_post].")
@click.option("--latents", default=_V.latents, show_default=True, type=click.IntRange(1, 1 << 24))
@click.option("--k", default=_V.k, show_default=True, type=click.IntRange(1, 1 << 16))
@click.option("--tokens", default=_V.tokens, show_default=True, type=click.IntRange(2, 1 << 34),
              help="Self-sampled training tokens.")
@click.option("--epochs", default=_V.epochs, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--seed", default=_V.seed, show_default=True, type=int)
@click.option("--prompt", default=None,
              help="Prompt to sweep from (every feature is also swept from BOS alone) [default: the opening words of"
                   " the model's own most likely text].")
@click.option("--values", default=_csv(_V.values), show_default=True, help="Absolute clamp values, comma-separated.")
@click.option("--relative-values", default=_csv(_V.relative_values), show_default=True,
              help="Clamp values as multiples of each feature's maximum activation, comma-separated.")
@click.option("--max-new-tokens", default=_V.max_new_tokens, show_default=True, type=click.IntRange(1, 4096))
@click.option("--reference-samples", default=_V.reference_samples, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Sequences the model samples as reference text for the firing words.")
@click.option("--reference-temperature", default=_V.reference_temperature, show_default=True,
              type=click.FloatRange(0, min_open=True))
@click.option("--features", default=None, type=click.IntRange(1, 1 << 24), help="Sweep only the first N features.")
@click.option("--out", default="validation", show_default=True, type=OutputFolder(),
              help="Folder for report.html, report.json, features.jsonl, the SAE and its facts.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's summary numbers as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def validate(model, hook, latents, k, tokens, epochs, seed, prompt, values, relative_values, max_new_tokens,
             reference_samples, reference_temperature, features, out, as_json, quiet):
    """Show that steering works on a real model: train an SAE, sweep every feature, count the clear ones.

    A feature steers clearly when, at some value, the continuation holds 2 more of its firing words than the
    unsteered text, at most 1 nat/token less fluent. See docs/validation.md.
    """
    v = run_validation(model=model, hook=hook, latents=latents, k=k, tokens=tokens, epochs=epochs,
                       seed=seed, prompt=prompt, values=parse_value_list(values), relative_values=parse_value_list(relative_values),
                       max_new_tokens=max_new_tokens, reference_samples=reference_samples,
                       reference_temperature=reference_temperature, features=features, out=out, progress=not quiet)
    if as_json:
        keys = REPORT_KEYS + ("top20_score_hits_no_fluency", "chance_bos", "chance_prompt", "chance_both", "cross")
        nulls = {lbl: {t: {k: x for k, x in d.items() if k != "features"} for t, d in tests.items()}
                 for lbl, tests in v.nulls.items()}
        click.echo(json.dumps({key: getattr(v, key) for key in keys} | {
            "nulls": nulls, "timings": v.timings, "model": v.model, "hook": v.hook,
            "prompts": {p.label: p.prompt for p in v.prompts}, "word_rule": v.config.get("word_rule")}, indent=2))
        return
    click.echo(f"SAE at {v.hook}: variance explained {v.variance_explained:.4f}, L0 {v.l0:.2f}, "
               f"dead {100 * v.dead_fraction:.2f}%")
    prompt = v.prompts[1].prompt
    click.echo(f"steer clearly: {v.clear_bos} from BOS (chance {v.chance_bos:.1f}), {v.clear_prompt} from "
               f"{prompt!r} (chance {v.chance_prompt:.1f}), {v.clear_both} from both (chance {v.chance_both:.1f}) "
               f"of {v.n_features}")
    for lbl, tests in v.nulls.items():
        click.echo(f"{lbl}: " + "; ".join(f"{t} {d['observed']} (chance {d['chance']:.1f}, net {d['net']:.1f}, "
                                          f"p {d['p']:.3g})" for t, d in tests.items()))
    for lbl, c in v.cross.items():
        click.echo(f"{lbl}: top's first 20: {c['top_steer_readback_top5']} with their text in the readback's top 5%,"
                   f" {c['top_steer_clear']} clear by firing words")
    click.echo(f"clear among the score's top 20: {v.top20_score_hits} (score without fluency: "
               f"{v.top20_score_hits_no_fluency})")
    click.echo(f"{v.timings['total_s']:.0f}s; report: {Path(out) / 'report.html'}")


COMMANDS = [train_sae, validate]
