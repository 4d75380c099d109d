"""Time the sweep browser's ranks (steer, word_rank, readback_rank) on a synthetic sweep folder.

    python benchmarks/browse_ranks.py --features 32768 --values 3 --readback 400   # ~100k rows, a 32k SAE

Writes a saesteer sweep folder (manifest, results.jsonl with texts of ``--words`` words and readback vectors
of ``--readback`` latents, facts with 8 firing words per feature), then prints the time of: opening it in the
browser (index build, and ranks: before serving up to ``RANK_WAIT_BYTES``, else in the background, waited
for), ``rank.annotate_folder`` alone (what ``saesteer top`` does), one recompute of the ranks into the
index, and the first page by steer. Uses a temporary folder unless ``--dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from saesteer.evaluation.facts_table import FactsTable
from saesteer.sweep import store as st
from saesteer.sweep.rank import annotate_folder
from saesteer.web.results_index import ResultsFolder
from saesteer.web.results_ranks import folder_ranks

VOCAB = ["".join(chr(97 + (i // 26 ** k) % 26) for k in range(3)) + "x" for i in range(5000)]
"""Letters only: ``text_metrics.words`` keeps letters, so ``w123`` would count as ``w``."""


def write(folder: Path, features: int, values: int, n_words: int, n_readback: int) -> None:
    rng = random.Random(0)
    vals = [float(v + 1) for v in range(values)]
    folder.mkdir(parents=True, exist_ok=True)
    st.write_manifest(folder, {"format": st.FORMAT, "sweep": {"values": vals}, "status": "complete",
                               "baseline": {"tokens": list(range(n_words)), "text": "the unsteered text"}})
    with open(folder / st.RESULTS, "w", encoding="utf-8") as f:
        for feat in range(features):
            for v in vals:
                rec = {"feature": feat, "value": v, "text": " ".join(rng.choices(VOCAB, k=n_words)), "differs": True,
                       "fire_hits": rng.randrange(4), "base_fire_hits": 0, "lens_hits": rng.randrange(4),
                       "repetition": round(rng.random() / 2, 4), "fluency_drop": round(rng.random() * 2, 4),
                       "score": round(rng.random() * 3, 3)}
                if n_readback:  # 0: a sweep without --readback
                    ids = sorted(rng.sample(range(features), n_readback))
                    rec.update(readback_ids=ids, readback_vals=[round(rng.random(), 6) for _ in ids])
                f.write(json.dumps(rec) + "\n")
    d, z = features, torch.zeros
    tensors = {"max_act": torch.rand(d), "frequency": torch.rand(d), "fire_ids": z(d, 4, dtype=torch.long) - 1,
               "fire_vals": z(d, 4), "lens_top_ids": z(d, 4, dtype=torch.long), "lens_top_vals": z(d, 4),
               "lens_bottom_ids": z(d, 4, dtype=torch.long), "lens_bottom_vals": z(d, 4),
               "example_index": z(d, 1, dtype=torch.long) - 1, "example_vals": z(d, 1),
               "reference_tokens": z(1, 2, dtype=torch.long)}
    words = [rng.sample(VOCAB, 8) for _ in range(d)]
    FactsTable(tensors, words, {0: "x"}, {"digest": "synthetic"}).save(folder / st.FACTS)


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<52} {time.perf_counter() - t0:8.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=32768)
    ap.add_argument("--values", type=int, default=3)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--readback", type=int, default=400,
                    help="latents stored per text's readback vector (0: a sweep without readback)")
    ap.add_argument("--dir", type=Path)
    a = ap.parse_args()
    folder = a.dir or Path(tempfile.mkdtemp(prefix="saesteer-ranks-")) / "sweep"
    if not (folder / st.RESULTS).exists():
        timed(f"write {a.features * a.values:,} rows", lambda: write(folder, a.features, a.values, a.words, a.readback))
    print(f"results.jsonl: {(folder / st.RESULTS).stat().st_size / 1e6:.0f} MB")
    rf = timed("open in the browser (index; ranks before serving if small)", lambda: ResultsFolder(folder, "bench"))
    if rf.ranker is not None:  # a large folder is ranked in the background
        timed("...its ranks in the background", rf.ranker.join)
    timed("rank.annotate_folder alone (saesteer top's work)", lambda: annotate_folder(folder))
    names, rows = timed("folder_ranks (annotate_folder + the columns)", lambda: folder_ranks(folder))
    timed("write them into the index (one transaction)", lambda: rf.db.set_ranks(names, rows, "bench"))
    timed("first page by steer", lambda: rf.search(sort="steer", limit=25))
    timed("best row per feature by steer, page 10", lambda: rf.search(sort="steer", per_feature=True, offset=250))
    rf.close()


if __name__ == "__main__":
    main()
