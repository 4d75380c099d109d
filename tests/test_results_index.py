"""The sweep browser's SQLite index on a large folder (100k rows): built once, reused, kept up to date,
rebuilt when stale, and answering like a plain Python sort/filter of the same rows."""

from __future__ import annotations

import json
import os
import random

import pytest

from saesteer.web import results_index
from saesteer.web.results_index import DB_NAME, ResultsFolder

WORDS = ["ocean", "river", "music", "garden", "winter", "castle", "forest", "rocket", "coffee", "paper"]
N_FEATURES, VALUES = 25_000, (2.0, 5.0, 10.0, 20.0)


def record(f: int, v: float, rng: random.Random) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(6)) + (" lighthouse keeper" if f % 997 == 0 else "")
    score = None if f % 11 == 0 else round(rng.random() * 5, 3)
    return {"feature": f, "value": v, "text": text, "score": score, "kl": round(rng.random(), 4)}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    rng = random.Random(0)
    recs = [record(f, v, rng) for f in range(N_FEATURES) for v in VALUES]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({"prompt": "p"}), encoding="utf-8")
    return folder, recs


def key(r: dict, sort: str, desc: bool):
    v = r.get(sort)
    return (v is None, 0 if v is None else (-v if desc else v), r["feature"], r["value"])


def test_a_100k_row_folder_is_indexed_once_and_answers_like_python(big, monkeypatch):
    folder, recs = big
    monkeypatch.setattr(results_index, "RELOAD_INTERVAL_S", 0.0)
    rf = ResultsFolder(folder, "big")
    assert len(rf) == len(recs) == 100_000 and rf.metrics == ["score", "kl"]
    assert rf.summary()["features"] == N_FEATURES
    stamp = os.stat(folder / DB_NAME).st_ino
    want = sorted(recs, key=lambda r: key(r, "score", True))
    total, rows = rf.search(sort="score", order="desc", offset=70_000, limit=20)
    assert total == 100_000
    assert [(r.feature, r.value) for r in rows] == [(r["feature"], r["value"]) for r in want[70_000:70_020]]
    assert all(r.metrics["score"] is None for r in rf.search(sort="score", offset=99_990)[1])  # missing last
    hits = [r for r in recs if "lighthouse" in r["text"]]
    total, rows = rf.search(q="lightho", sort="kl", order="asc", limit=200)
    assert total == len(hits) == 26 * len(VALUES)
    assert [r.feature for r in rows] == [r["feature"] for r in sorted(hits, key=lambda r: key(r, "kl", False))]
    best = {}
    for r in sorted(recs, key=lambda r: key(r, "kl", True)):
        best.setdefault(r["feature"], r)
    total, rows = rf.search(sort="kl", order="desc", per_feature=True, offset=100, limit=50)
    want = sorted(best.values(), key=lambda r: key(r, "kl", True))
    assert total == N_FEATURES and [(r.feature, r.value) for r in rows] == [(r["feature"], r["value"]) for r in want[100:150]]
    rf.close()

    again = ResultsFolder(folder, "big")  # the index is reused, not built again
    assert os.stat(folder / DB_NAME).st_ino == stamp and len(again) == 100_000
    with open(folder / "results.jsonl", "a", encoding="utf-8") as f:  # a running sweep appends
        f.write(json.dumps({"feature": 7, "value": 1.0, "text": "zebra", "score": 99.0}) + "\n")
    again.refresh(force=True)
    assert len(again) == 100_001 and again.search(sort="score", limit=1)[1][0].text == "zebra"
    assert again.search(sort="score", per_feature=True, feature=7)[1][0].text == "zebra"  # per-feature cache renewed
    again.close()


def test_a_stale_or_foreign_index_is_rebuilt(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps({"feature": 1, "value": 2, "text": "a b"}) + "\n")
    assert len(ResultsFolder(folder, "f")) == 1
    new = folder / "new.jsonl"  # the log rewritten as a new file: indexed again
    new.write_text("".join(json.dumps({"feature": f, "value": 1, "text": "c"}) + "\n" for f in range(3)))
    new.replace(folder / "results.jsonl")
    assert len(ResultsFolder(folder, "f")) == 3
    (folder / DB_NAME).write_bytes(b"not a database")
    assert len(ResultsFolder(folder, "f")) == 3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left


def test_a_read_only_folder_is_indexed_in_memory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps({"feature": 1, "value": 2, "text": "a b", "score": 1}) + "\n")
    os.chmod(folder, 0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        rf = ResultsFolder(folder, "ro")
        assert rf.search(q="b", per_feature=True)[0] == 1 and not (folder / DB_NAME).exists()
    finally:
        os.chmod(folder, 0o755)
