"""One writer per folder: sweeps, merges (and the manifest's settings checked on read); a killed merge's
temporary folder is cleaned by the next merge."""

import json
import os
import signal
import subprocess
import sys

import pytest

from saesteer.errors import SaesteerError
from saesteer.locks import FolderLock, lock_path
from saesteer.sweep import merge
from test_sweep import make, records, ref, steerer  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_second_sweep_on_a_folder_in_use_is_refused_and_nothing_is_doubled(steerer, ref, tmp_path):  # noqa: F811
    out = tmp_path / "sw"
    first = make(steerer, ref, out=out).run()
    got = [next(first)]  # the first run holds the folder
    with pytest.raises(SaesteerError, match=rf"{out} is in use: another saesteer run \(pid {os.getpid()} on ") as e:
        list(make(steerer, ref, out=out).run())
    assert len(str(e.value).splitlines()) == 1
    got += list(first)
    recs = records(out)
    keys = [(r["feature"], r["value"]) for r in recs]
    assert len(keys) == len(set(keys)) == 24 and len(got) == 24
    assert len((out / "results.jsonl").read_text().splitlines()) == 24
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert list(make(steerer, ref, out=out).run()) == []  # released at the end


def test_a_lock_of_a_dead_process_does_not_block(steerer, ref, tmp_path):  # noqa: F811
    out = tmp_path / "sw"
    code = ("import os, signal, sys; from saesteer.locks import FolderLock; FolderLock(sys.argv[1]).acquire();"
            " print(os.getpid(), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(lock_path(out).read_text())["pid"] == int(proc.stdout)  # left behind, naming the dead holder
    assert len(make(steerer, ref, out=out).results()) == 24


def test_holder_named_and_released(tmp_path):
    a = FolderLock(tmp_path / "x", what="sweep folder").acquire()
    with pytest.raises(SaesteerError, match=rf"pid {os.getpid()} on .* is writing this sweep folder"):
        FolderLock(tmp_path / "x", what="sweep folder").acquire()
    a.release()
    with FolderLock(tmp_path / "x"):
        pass


def test_manifest_settings_are_checked_on_read(steerer, ref, tmp_path):  # noqa: F811
    out = tmp_path / "sw"
    it = make(steerer, ref, out=out).run()
    next(it)
    it.close()
    m = json.loads((out / "manifest.json").read_text())
    assert m["max_new_tokens"] == 10 and m["batch_size"] == 8 and m["features"] == "0:12" and m["shard"] == "0/1"
    (out / "manifest.json").write_text(json.dumps(dict(m, max_new_tokens="ten")))
    with pytest.raises(SaesteerError, match=r"sweep settings in .*manifest.json are not valid \(max_new_tokens"):
        list(make(steerer, ref, out=out).run())


@pytest.fixture
def shards(steerer, ref, tmp_path):  # noqa: F811
    out = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        make(steerer, ref, out=d, shard=(i, 2)).results()
        out.append(d)
    return out


def test_merge_into_an_output_in_use_is_refused(shards, tmp_path):
    with FolderLock(tmp_path / "m"):
        with pytest.raises(SaesteerError, match="in use"):
            merge(shards, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert merge(shards, tmp_path / "m")["status"] == "complete"


def test_a_killed_merge_leaves_a_temporary_folder_the_next_merge_removes(shards, tmp_path):
    out = tmp_path / "merged"
    code = ("import os, signal, sys; from saesteer.sweep import merge, store;"  # killed once the results are written
            " store.write_manifest = lambda *a: os.kill(os.getpid(), signal.SIGKILL); merge(sys.argv[1:3], sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, shards), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".merged.") and p.is_dir()]
    assert len(left) == 1 and (left[0] / "results.jsonl").exists()  # killed half-way: results, no manifest
    assert not out.exists()
    m = merge(shards, out)
    assert m["status"] == "complete" and len(records(out)) == 24
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".merged.") and p.is_dir()] == []

