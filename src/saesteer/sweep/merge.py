"""Join the shards of one sweep (``--shard I/N`` runs) into the folder the unsharded run would have written.

The shards must be the same sweep (equal identity apart from the shard), all ``N`` of them, each finished,
with the same unsteered text. Their feature facts should be equal too; if they were computed apart and
differ (another machine, another device), the facts-based metrics are recomputed from each result's tokens
and text with the first shard's facts, so the merged table is consistent. A relative sweep's clamp values
come from the facts, so its shards must agree on them. The output is built in a temporary folder beside it
and renamed into place, under a lock on the output; a killed merge's temporary folder is removed by the next.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import FactsTable
from saesteer.evaluation.text_metrics import hits, text_metrics
from saesteer.locks import FolderLock
from saesteer.sweep import store as st
from saesteer.sweep.runner import SweepResult
from saesteer.sweep.spec import SweepSpec


def rescore(record: dict, facts: FactsTable, baseline: dict) -> dict:
    """``record`` with its facts-based metrics recomputed from its tokens and text (fluency kept)."""
    targets = facts.targets(record["feature"])
    base_fl = baseline.get("fluency")
    fl = record.get("fluency")
    m = text_metrics(record["tokens"], record["text"], baseline["tokens"], baseline["text"], targets,
                     fluency=fl, baseline_fluency=base_fl if fl is not None else None,
                     baseline_hits=hits(baseline["tokens"], baseline["text"], targets))
    res = SweepResult(record["feature"], record["value"], record.get("clamp", record["value"]), record["tokens"],
                      record["text"], m)
    return res.to_record()


def merge(directories: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Merge shard folders into ``out`` (which must not exist yet, or be empty); return the new manifest.

    ``out`` is locked for the whole merge (a second merge into it is refused); what a killed merge left
    beside it is removed first."""
    dirs = [Path(d) for d in directories]
    out = Path(out)
    if not dirs:
        raise SaesteerError("give the shard folders to merge, e.g. saesteer merge run0 run1 --out run")
    if any(d.resolve() == out.resolve() for d in dirs):
        raise SaesteerError("--out must be a new folder, not one of the shards")
    with FolderLock(out, what="merge output"):
        remove_leftovers(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SaesteerError(f"{out} already exists and is not empty; merge into a new folder")
        manifests = [_shard_manifest(d) for d in dirs]
        specs = [SweepSpec.from_identity(m["sweep"]) for m in manifests]
        _check_shards(dirs, manifests, specs)
        facts = FactsTable.load(dirs[0] / st.FACTS)
        if len({m["facts"]["digest"] for m in manifests}) > 1 and specs[0].relative:
            raise SaesteerError("the shards computed different feature facts, and a relative sweep's clamp values"
                                " come from them; rerun the shards with the same --reference-text and facts")
        entries = _entries(dirs, specs, manifests)
        rescored = [m["facts"]["digest"] != facts.digest for m in manifests]
        manifest = _merged_manifest(manifests, specs[0].unsharded(), dirs, facts)
        lines = _lines(dirs, entries, rescored, facts, manifests[0]["baseline"])
        _write(out, facts, lines, manifest)
    return manifest


def staging_name(name: str) -> str:
    return f".{name}.merge-"


def remove_leftovers(out: Path) -> None:
    """Remove the temporary folders that killed merges into ``out`` left beside it (the caller holds the lock)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(merge-)?[a-z0-9_]{{8}}\.tmp")
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def _shard_manifest(d: Path) -> dict:
    m = st.read_manifest(d)
    if m is None:
        raise SaesteerError(f"{d} is not a sweep folder (no {st.MANIFEST})")
    return m


def _check_shards(dirs: list[Path], manifests: list[dict], specs: list[SweepSpec]) -> None:
    """The folders are all N shards of one split of one sweep, with one unsteered text."""
    first = specs[0]
    for d, spec in zip(dirs[1:], specs[1:]):
        diffs = first.differences(spec, ignore=("shard",))
        if diffs:
            raise SaesteerError(f"{d} is not part of the same sweep as {dirs[0]} ({'; '.join(diffs)})")
    n = first.shard[1]
    if any(s.shard[1] != n for s in specs):
        counts = sorted({s.shard[1] for s in specs})
        raise SaesteerError(f"the folders were split into different numbers of shards ({counts}); merge shards of"
                            " one split")
    seen: dict[int, Path] = {}
    for d, spec in zip(dirs, specs):
        i = spec.shard[0]
        if i in seen:
            raise SaesteerError(f"shard {i}/{n} is given twice ({seen[i]} and {d})")
        seen[i] = d
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise SaesteerError(f"shards {', '.join(f'{i}/{n}' for i in missing)} are missing; give all {n} shard folders")
    base = manifests[0]["baseline"]
    for d, m in zip(dirs[1:], manifests[1:]):
        if m["baseline"]["tokens"] != base["tokens"]:
            raise SaesteerError(f"{d} has another unsteered text than {dirs[0]} ({m['baseline']['text']!r} vs"
                                f" {base['text']!r}): the shards did not run the same model the same way")


def _entries(dirs: list[Path], specs: list[SweepSpec], manifests: list[dict]) -> list[tuple[int, ...]]:
    """``(feature, value index, folder, offset, length)`` of every result, sorted; each shard finished."""
    entries: list[tuple[int, int, int, int, int]] = []
    for i, (d, spec, m) in enumerate(zip(dirs, specs, manifests)):
        scan = st.scan_results(d / st.RESULTS, spec.values, set(spec.shard_features()))
        want = spec.n_shard_features()
        if len(scan.complete) != want or m.get("status") != "complete":
            raise SaesteerError(f"shard {spec.shard[0]}/{spec.shard[1]} in {d} is not finished"
                                f" ({len(scan.complete)}/{want} features); run its sweep command again to finish it")
        entries.extend((f, vi, i, off, length) for f, vi, off, length in scan.entries)
    entries.sort()
    if any(a[:2] == b[:2] for a, b in zip(entries, entries[1:])):
        raise SaesteerError("two shards hold the same feature; they are not shards of one split")
    return entries


def _lines(dirs: list[Path], entries, rescored: list[bool], facts: FactsTable, baseline: dict):
    """The merged ``results.jsonl`` lines, in order (rescored with ``facts`` where a shard's facts differ)."""
    handles = [open(d / st.RESULTS, "rb") for d in dirs]
    try:
        for _, _, i, offset, length in entries:
            handles[i].seek(offset)
            line = handles[i].read(length)
            yield st.record_line(rescore(json.loads(line), facts, baseline)) if rescored[i] else line
    finally:
        for h in handles:
            h.close()


def _write(out: Path, facts: FactsTable, lines, manifest: dict) -> None:
    """Build the folder beside ``out`` and rename it into place (nothing half-written at ``out``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_name(out.name), suffix=".tmp", dir=out.parent))
    try:
        facts.save(staging / st.FACTS)
        st.write_lines(staging, lines)
        st.write_manifest(staging, manifest)
        os.chmod(staging, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _merged_manifest(manifests: list[dict], spec: SweepSpec, dirs: list[Path], facts: FactsTable) -> dict:
    m = dict(manifests[0])
    m["sweep"] = spec.identity()
    m["fingerprint"] = spec.fingerprint()
    m["shard"] = "0/1"
    m["n_features"] = spec.n_shard_features()
    m["done"] = spec.n_shard_features()
    m["status"] = "complete"
    m["facts"] = dict(m["facts"], digest=facts.digest)
    m["started_at"] = min(x["started_at"] for x in manifests)
    m["finished_at"] = max(x.get("finished_at") or "" for x in manifests) or None
    m["sessions"] = [dict(s, shard=x["shard"]) for x in manifests for s in x.get("sessions", [])]
    m["elapsed_s"] = round(sum(x.get("elapsed_s", 0.0) for x in manifests), 3)
    computed = sum(s["features"] for s in m["sessions"])
    m["features_per_second"] = round(computed / m["elapsed_s"], 3) if m["elapsed_s"] > 0 and computed else None
    m["merged_from"] = [{"folder": str(d), "shard": x["shard"], "device": x.get("device"),
                         "elapsed_s": x.get("elapsed_s"), "features_per_second": x.get("features_per_second")}
                        for d, x in zip(dirs, manifests)]
    return m
