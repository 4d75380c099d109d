"""The sweep browser shows the ranks ``saesteer top`` gives (steer, word_rank, readback_rank...): equal to
``rank.annotate_folder``'s for every row, sorted by steer by default, kept up to date as a sweep appends."""

from __future__ import annotations

import json
import math
import sqlite3
import threading

import pytest
from conftest import REFERENCE_STORY

from saesteer.sweep import Sweep
from saesteer.sweep import store as st
from saesteer.sweep.rank import annotate_folder
from saesteer.web import results_index
from saesteer.web.results_index import DB_NAME, ResultsFolder
from saesteer.web.results_ranks import RANK_FIELDS, folder_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sweep_dir(small_steerer, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranked")
    out, ref = root / "sw", root / "ref.txt"
    ref.write_text(REFERENCE_STORY)
    Sweep(small_steerer, out=out, readback=True, features="0:12", values=[20, -10], batch_size=12,
          reference_text=ref, cache_dir=str(root / "cache"), max_new_tokens=8).results()
    return out


def ranks_of(folder: ResultsFolder) -> dict:
    total, rows = folder.search(sort="feature", order="asc", limit=None)
    return {(r.feature, r.value): {n: r.metrics.get(n) for n in RANK_FIELDS} for r in rows}


def expected(path) -> dict:
    recs, _ = annotate_folder(path)
    return {(r["feature"], float(r["value"])): {n: r.get(n) for n in RANK_FIELDS} for r in recs}


def recording(monkeypatch) -> list:
    """The threads that compute ranks from now on."""
    threads = []

    def recorded(*args):
        threads.append(threading.current_thread())
        return folder_ranks(*args)

    monkeypatch.setattr(results_index, "folder_ranks", recorded)
    return threads


def test_every_row_has_the_ranks_top_gives_and_steer_sorts_first(sweep_dir, monkeypatch):
    folder = ResultsFolder(sweep_dir, "sw")
    want = expected(sweep_dir)
    assert len(want) == 24 and ranks_of(folder) == want
    assert sum(v["readback_rank"] is not None for v in want.values()) >= 12  # both measures are there
    assert sum(v["word_rank"] is not None for v in want.values()) >= 12
    assert folder.metrics[:2] == ["steer", "score"] and folder.default_sort() == "steer"
    _, rows = folder.search(limit=None)
    assert [r.metrics["steer"] for r in rows] == sorted((v["steer"] for v in want.values()), reverse=True)
    best = max(want.items(), key=lambda kv: (kv[1]["steer"], -kv[0][0]))
    assert [r.value for r in folder.feature_rows(best[0][0])][0] == best[0][1]
    folder.close()
    with sqlite3.connect(sweep_dir / DB_NAME) as c:  # an index of an earlier version: no ranks, no stamp
        c.execute("DELETE FROM meta WHERE key = 'ranks_stamp'")
        for (pos,) in c.execute(f"SELECT pos FROM metrics WHERE name IN {RANK_FIELDS}").fetchall():
            c.execute(f"UPDATE rows SET m{pos} = NULL")
    monkeypatch.setattr(results_index, "RANK_WAIT_BYTES", 0)  # a large folder: ranked in the background
    threads = recording(monkeypatch)
    again = ResultsFolder(sweep_dir, "sw")
    if again.ranker is not None:
        again.ranker.join(30)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert ranks_of(again) == want
    again.close()


def test_a_running_sweep_gets_its_ranks_again_in_the_background(sweep_dir, tmp_path, monkeypatch):
    folder_path = tmp_path / "growing"
    folder_path.mkdir()
    (folder_path / st.MANIFEST).write_bytes((sweep_dir / st.MANIFEST).read_bytes())
    (folder_path / st.FACTS).mkdir()
    for f in (sweep_dir / st.FACTS).iterdir():
        (folder_path / st.FACTS / f.name).write_bytes(f.read_bytes())
    lines = (sweep_dir / st.RESULTS).read_bytes().splitlines(keepends=True)
    (folder_path / st.RESULTS).write_bytes(b"".join(lines[:12]))
    monkeypatch.setattr(results_index, "RELOAD_INTERVAL_S", 0.0)
    folder = ResultsFolder(folder_path, "growing")
    assert ranks_of(folder) == {k: v for k, v in expected(folder_path).items()}
    first = ranks_of(folder)
    with open(folder_path / st.RESULTS, "ab") as f:
        f.write(b"".join(lines[12:]))
    monkeypatch.setattr(results_index, "RANK_INTERVAL_S", 3600.0)
    folder.refresh()
    assert folder.ranker is None and len(folder) == 24  # lines indexed at once, ranks not yet
    assert {k: v for k, v in ranks_of(folder).items() if k in first} == first
    assert all(v["steer"] is None for k, v in ranks_of(folder).items() if k not in first)
    monkeypatch.setattr(results_index, "RANK_INTERVAL_S", 0.0)
    monkeypatch.setattr(results_index, "RANK_SHARE", math.inf)
    threads = recording(monkeypatch)
    folder.refresh()
    ranker = folder.ranker
    if ranker is not None:
        ranker.join(30)
    assert threads and threads[0] is not threading.main_thread()
    assert ranks_of(folder) == expected(sweep_dir)
    folder.close()


def test_a_folder_too_large_to_rank_in_the_server_is_browsed_without_ranks(sweep_dir, tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.mkdir()
    for name in (st.MANIFEST, st.RESULTS):
        (big / name).write_bytes((sweep_dir / name).read_bytes())
    folder = ResultsFolder(big, "big")
    assert "steer" in folder.metrics and folder.default_sort() == "steer"
    folder.close()
    monkeypatch.setattr(results_index, "RANK_MAX_ROWS", 23)
    folder = ResultsFolder(big, "big")  # grown past the limit: its old ranks are cleared, none computed
    assert folder.default_sort() == "score" and "steer" not in folder.metrics
    assert all(r.metrics["steer"] is None for r in folder.search(limit=None)[1])
    folder.close()


def test_a_folder_top_cannot_rank_is_browsed_without_ranks(tmp_path):
    folder_path = tmp_path / "plain"
    folder_path.mkdir()
    (folder_path / st.RESULTS).write_text(json.dumps({"feature": 1, "value": 2.0, "text": "a", "score": 1.0}) + "\n")
    folder = ResultsFolder(folder_path, "plain")
    assert folder.metrics == ["score"] and folder.default_sort() == "score"
    folder.close()
