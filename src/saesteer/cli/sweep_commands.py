"""Sweep commands: sweep (every feature, resumable, sharded), merge (join shards), top (ranked table)."""

from __future__ import annotations

import json

import click

from saesteer.cli.config_options import config_from, config_options
from saesteer.cli.options import build_steerer, model_options
from saesteer.cli.paths import OutputFolder
from saesteer.evaluation.chance import measure_passes
from saesteer.strength import DEFAULT_MULTIPLE
from saesteer.sweep.config import RayConfig, SweepConfig
from saesteer.sweep.distributed import distributed_sweep, import_ray
from saesteer.sweep.merge import merge as merge_fn
from saesteer.sweep.rank import annotate_folder, explain_feature, format_table, rank
from saesteer.sweep.runner import Sweep
from saesteer.sweep.store import read_manifest


@click.command()
@model_options
@config_options(SweepConfig)
@click.option("--out", required=True, type=OutputFolder(), help="Folder for the results (resumable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options(RayConfig)
def sweep(model, sae, hook, device, out, quiet, **options):
    """Clamp every feature (of a range) to each value while generating, and measure each continuation.

    Writes OUT/manifest.json, OUT/results.jsonl and OUT/sentences.txt. Killed at any moment, the same command
    finishes the job; a different command on the same OUT is refused.
    """
    default_values = not options["values"]  # the default strength is in each feature's own units
    if default_values:
        options.update(values=(f"{DEFAULT_MULTIPLE:g}",), relative=True)
    ray = config_from(RayConfig, options)
    config = config_from(SweepConfig, options)
    if ray.address is None and (ray.workers is not None or ray.gpus_per_worker):
        raise click.UsageError("--workers and --gpus-per-worker go with --ray")
    if ray.address is not None:
        import_ray()  # refused before anything else is said
    if default_values:
        click.echo(f"values: {DEFAULT_MULTIPLE:g} x each feature's max activation on the reference text"
                   " (--values V for absolute values)", err=True)
    if ray.address is not None:
        explicit = click.get_current_context().get_parameter_source("device") != click.core.ParameterSource.DEFAULT
        m = distributed_sweep(model, sae, hook=hook, device=device if explicit else None, out=out, progress=not quiet,
                              config=config, ray=ray)
        done = "done on Ray"
    else:
        n = sum(1 for _ in Sweep(build_steerer(model, sae, hook, device), config, out=out, progress=not quiet).run())
        m = read_manifest(out)
        done = f"done ({n} new results)"
    rate = m.get("features_per_second")
    click.echo(f"{m['done']}/{m['n_features']} features {done}, status {m['status']}"
               + (f", {rate:.1f} features/s" if rate else "") + f"; see {out}/sentences.txt, or saesteer top {out}",
               err=True)


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=OutputFolder(), help="New folder for the merged sweep.")
def merge(folders, out):
    """Join the shard folders of one sweep (saesteer sweep --shard I/N) into one folder."""
    m = merge_fn(folders, out)
    click.echo(f"merged {len(folders)} shards: {m['n_features']} features into {out}", err=True)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--n", default=50, show_default=True, type=click.IntRange(1, 1 << 30), help="Rows to show.")
@click.option("--sort", default="steer", show_default=True,
              type=click.Choice(["steer", "readback", "words", "score", "on_target", "lens", "fluency", "repetition", "distinct",
                                 "first_diff", "feature"]),
              help="Metric to rank by (each feature at its best value by that metric); steer combines the firing-word"
                   " and readback ranks, fluency and repetition (docs/sweeps.md).")
@click.option("--query", default=None, metavar="WORD",
              help="Only features whose firing words or top tokens are WORD, or whose text contains it.")
@click.option("--all-values", is_flag=True, help="One row per result instead of per feature.")
@click.option("--explain", "explain", default=None, type=click.IntRange(0), metavar="F",
              help="Say how feature F's steer score comes about at each value, instead of the table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of rows) for scripts.")
def top(folder, n, sort, query, all_values, explain, as_json):
    """Print the features of a sweep that steer most clearly (or by another metric)."""
    if explain is not None:
        lines = explain_feature(annotate_folder(folder)[0], explain)
        if not lines:
            raise click.UsageError(f"feature {explain} is not in this sweep")
        click.echo(f"feature {explain}, best value first:\n" + "\n".join(lines))
        return
    recs, facts = annotate_folder(folder)
    rows = rank(recs, facts=facts, n=n, sort=sort, query=query, all_values=all_values)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], ensure_ascii=False, indent=2))
    else:
        click.echo(format_table(rows))
        click.echo(TOP_LEGEND)
        if recs:
            click.echo(weights_line(recs))


def weights_line(recs: list[dict]) -> str:
    """The measures' weights in ``steer`` and the passes they come from (``evaluation.chance``)."""
    passes = measure_passes(recs)
    parts = []
    for name, label in (("word", "words"), ("readback", "readback")):
        seen = passes.get(name)
        how = "not measured" if seen is None else f"{seen[0]} texts in the top 5%, {seen[1]:.1f} by chance"
        parts.append(f"{label} {recs[0][f'{name}_weight']:.2f} ({how})")
    return ("weights in steer: " + ", ".join(parts) +
            "; a weight is the share of the measure's passes that chance does not explain, the larger set to 1")


TOP_LEGEND = (
    "hits W/L: W = words of the text that the feature fires on in the reference text, L = generated tokens among"
    " the feature's logit-lens (promoted) tokens; steer = combined score (word and readback ranks, fluency, loops);"
    " words = share of the other features' texts holding fewer of this feature's firing words than its own text;"
    " readback = share of the other features' texts on which this feature reads back weaker than on its own text"
    " (the unsteered model reads the text, the SAE encodes it); 1 = best for both."
)
"""What the terminal table's less obvious columns mean (printed under it)."""


COMMANDS = [sweep, merge, top]
