"""Time the sweep browser's SQLite index on a synthetic sweep: build once, then page, sort and search.

    python benchmarks/browse_index.py --features 1000000 --values 3    # 3M rows (a 1M-latent SAE)

Prints the build time, the reopen time and each query's time (the first query of a sort order builds its
index; later ones are the browsing speed). Uses a temporary folder unless ``--dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from saesteer.web.results_index import ResultsFolder

WORDS = "ocean river music garden winter castle forest rocket coffee paper lighthouse keeper".split()


def write(folder: Path, features: int, values: int) -> None:
    rng = random.Random(0)
    with open(folder / "results.jsonl", "w", encoding="utf-8") as f:
        for feat in range(features):
            for v in range(values):
                f.write(json.dumps({"feature": feat, "value": float(v), "text": " ".join(rng.choices(WORDS, k=8)),
                                    "score": rng.random(), "kl": rng.random(), "fluency_drop": rng.random()}) + "\n")


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<48} {time.perf_counter() - t0:8.3f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--values", type=int, default=3)
    ap.add_argument("--dir", type=Path)
    a = ap.parse_args()
    folder = a.dir or Path(tempfile.mkdtemp(prefix="saesteer-browse-"))
    if not (folder / "results.jsonl").exists():
        timed(f"write {a.features * a.values:,} rows", lambda: write(folder, a.features, a.values))
    rf = timed("build the index", lambda: ResultsFolder(folder, "bench"))
    rf.close()
    rf = timed("reopen", lambda: ResultsFolder(folder, "bench"))
    n = len(rf)
    for label, kw in [("first page by score (first: makes its index)", {}), ("first page by score", {}),
                      ("page in the middle by score", {"offset": n // 2}),
                      ("sort by kl ascending, first page", {"sort": "kl", "order": "asc"}),
                      ("best row per feature (first: cached)", {"per_feature": True}),
                      ("best row per feature, page 10", {"per_feature": True, "offset": 500}),
                      ("search 'lighthouse keeper'", {"q": "lighthouse keeper"}),
                      ("search '\"keeper lighthouse\"'", {"q": '"keeper lighthouse"'}),
                      ("one feature's rows", {"feature": a.features // 2})]:
        kw = {"sort": "score", "order": "desc", **kw}
        timed(label, lambda kw=kw: rf.search(**kw))


if __name__ == "__main__":
    main()
