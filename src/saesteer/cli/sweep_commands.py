"""Sweep commands: sweep (every feature, resumable, sharded), merge (join shards), top (ranked table)."""

from __future__ import annotations

import json

import click

from saesteer.cli.paths import OutputFolder
from saesteer.cli.options import build_steerer, model_options
from saesteer.steering.clamp import MODES


@click.command()
@model_options
@click.option("--features", default="all", show_default=True,
              help="START:STOP (STOP exclusive), a list like 0:100,512, or all.")
@click.option("--values", "values", multiple=True, default=(), metavar="V[,V...]",
              help="Absolute clamp values (repeatable, comma lists allowed, e.g. --values -20,10,20)"
                   " [default: 2 x each feature's max activation, i.e. --relative --values 2].")
@click.option("--relative", is_flag=True,
              help="Read --values as multiples of each feature's max activation on the reference text.")
@click.option("--prompt", default=None, help="Text to continue; without it, generation starts from BOS alone.")
@click.option("--max-new-tokens", default=10, show_default=True, type=click.IntRange(1, 4096))
@click.option("--mode", type=click.Choice(MODES), default="delta", show_default=True,
              help="delta: add decode(z')-decode(z), keeping the SAE error; reconstruct: replace by decode(z'); add: add VALUE"
                   " times the feature's decoder direction.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 1 << 20),
              help="Rows (feature x value) per generate call; default 512.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Compute dtype of the engine (default: the model's, float32).")
@click.option("--engine", type=click.Choice(["auto", "fast", "reference"]), default="auto", show_default=True,
              help="Generation engine (results are the same; speed is not).")
@click.option("--shard", default=None, metavar="I/N", help="Do the I-th (from 0) of N disjoint parts of the sweep.")
@click.option("--fluency", is_flag=True, help="Also measure each text's mean log-probability under the unsteered model.")
@click.option("--reference-text", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file on which firing tokens are found (default: text the model samples itself).")
@click.option("--reference-samples", default=256, show_default=True, type=click.IntRange(1, 100_000),
              help="Sequences the model samples as reference text (without --reference-text).")
@click.option("--reference-length", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Tokens per reference sequence.")
@click.option("--out", required=True, type=OutputFolder(), help="Folder for the results (resumable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray workers: --ray alone starts a local Ray instance; --ray auto or --ray ray://HOST:10001"
                   " joins a cluster (needs pip install 'saesteer[ray]').")
@click.option("--workers", default=None, type=click.IntRange(1, 1 << 16),
              help="With --ray: worker processes, each loading the model once (default: as many as the cluster fits).")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0, 1024),
              help="With --ray: GPUs Ray gives each worker (fractions share a GPU); 0: CPU workers.")
def sweep(model, sae, hook, device, features, values, relative, prompt, max_new_tokens, mode, batch_size, dtype, engine,
          shard, fluency, reference_text, reference_samples, reference_length, out, quiet, ray_address=None,
          workers=None, gpus_per_worker=0.0):
    """Clamp every feature (of a range) to each value while generating, and measure each continuation.

    Writes OUT/manifest.json, OUT/results.jsonl and OUT/sentences.txt. Killed at any moment, the same command
    finishes the job; a different command on the same OUT is refused.
    """
    from saesteer.sweep.runner import Sweep
    from saesteer.sweep.spec import parse_shard

    if not values:  # the default strength is in each feature's own units
        from saesteer.strength import DEFAULT_MULTIPLE

        values, relative = (f"{DEFAULT_MULTIPLE:g}",), True
        click.echo(f"values: {DEFAULT_MULTIPLE:g} x each feature's max activation on the reference text"
                   " (--values V for absolute values)", err=True)
    shard_t = parse_shard(shard)
    if ray_address is None and (workers is not None or gpus_per_worker):
        raise click.UsageError("--workers and --gpus-per-worker go with --ray")
    if ray_address is not None:
        from saesteer.sweep.distributed import distributed_sweep

        explicit = click.get_current_context().get_parameter_source("device") != click.core.ParameterSource.DEFAULT
        m = distributed_sweep(model, sae, hook=hook, device=device if explicit else None, engine=engine,
                              address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                              features=features, values=list(values), relative=relative, prompt=prompt,
                              max_new_tokens=max_new_tokens, mode=mode, fluency=fluency, dtype=dtype,
                              batch_size=batch_size, shard=shard_t, out=out, reference_text=reference_text,
                              reference_samples=reference_samples, reference_length=reference_length,
                              progress=not quiet)
        rate = m.get("features_per_second")
        click.echo(f"{m['done']}/{m['n_features']} features done on Ray, status {m['status']}"
                   + (f", {rate:.1f} features/s" if rate else "") + f"; see {out}/sentences.txt, or saesteer top {out}",
                   err=True)
        return
    st = build_steerer(model, sae, hook, device)
    st.engine = engine
    sw = Sweep(st, features=features, values=list(values), relative=relative, prompt=prompt,
               max_new_tokens=max_new_tokens, mode=mode, fluency=fluency, dtype=dtype, batch_size=batch_size,
               shard=shard_t, out=out, reference_text=reference_text, reference_samples=reference_samples,
               reference_length=reference_length, progress=not quiet)
    n = 0
    for _ in sw.run():
        n += 1
    from saesteer.sweep.store import read_manifest

    m = read_manifest(out)
    rate = m.get("features_per_second")
    click.echo(f"{m['done']}/{m['n_features']} features done ({n} new results), status {m['status']}"
               + (f", {rate:.1f} features/s" if rate else "") + f"; see {out}/sentences.txt, or saesteer top {out}",
               err=True)


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=OutputFolder(), help="New folder for the merged sweep.")
def merge(folders, out):
    """Join the shard folders of one sweep (saesteer sweep --shard I/N) into one folder."""
    from saesteer.sweep.merge import merge as merge_fn

    m = merge_fn(folders, out)
    click.echo(f"merged {len(folders)} shards: {m['n_features']} features into {out}", err=True)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--n", default=50, show_default=True, type=click.IntRange(1, 1 << 30), help="Rows to show.")
@click.option("--sort", default="steer", show_default=True,
              type=click.Choice(["steer", "readback", "score", "on_target", "lens", "fluency", "repetition", "distinct",
                                 "first_diff", "feature"]),
              help="Metric to rank by (each feature at its best value by that metric); steer combines firing words,"
                   " the readback rank, fluency and repetition (docs/sweeps.md).")
@click.option("--query", default=None, metavar="WORD",
              help="Only features whose firing words or top tokens are WORD, or whose text contains it.")
@click.option("--all-values", is_flag=True, help="One row per result instead of per feature.")
@click.option("--explain", "explain", default=None, type=click.IntRange(0), metavar="F",
              help="Say how feature F's steer score comes about at each value, instead of the table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of rows) for scripts.")
def top(folder, n, sort, query, all_values, explain, as_json):
    """Print the features of a sweep that steer most clearly (or by another metric)."""
    from saesteer.sweep.rank import annotate, explain_feature, format_table, load_folder_records, top as top_fn

    if explain is not None:
        lines = explain_feature(annotate(load_folder_records(folder)), explain)
        if not lines:
            raise click.UsageError(f"feature {explain} is not in this sweep")
        click.echo(f"feature {explain}, best value first:\n" + "\n".join(lines))
        return
    rows = top_fn(folder, n=n, sort=sort, query=query, all_values=all_values)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], ensure_ascii=False, indent=2))
    else:
        click.echo(format_table(rows))


COMMANDS = [sweep, merge, top]
