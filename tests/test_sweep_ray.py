"""Sweeps on Ray (a local instance, 2 CPU workers): the same folder as one process, workers killed mid-chunk.

One Ray instance serves the module (starting one takes seconds); each sweep starts its own two workers.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from test_sweep import REF, small_model, small_sae


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(300)]  # a Ray that hangs fails the test, not the run

FEATURES = "0:24"
VALUES = [20, -10]
BATCH = 8  # rows per call: 4 features; the driver cuts 24 features for 2 workers into chunks of 3


def test_without_ray_a_one_line_error(monkeypatch, tmp_path, capsys):
    from saesteer.cli.main import run
    from saesteer.sweep.distributed import distributed_sweep, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(SaesteerError, match=r"pip install 'saesteer\[ray\]'"):
        import_ray()
    with pytest.raises(SaesteerError, match=r"pip install 'saesteer\[ray\]'"):
        distributed_sweep("gpt2-small", "openai:v5_32k/resid_post_mlp/6", out=tmp_path / "x")
    capsys.readouterr()
    assert run(["sweep", "--out", str(tmp_path / "x"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'saesteer[ray]'" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert run(["sweep", "--out", str(tmp_path / "y"), "--workers", "2"]) == 2  # --workers goes with --ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gpt2_tokenizer):
    from saesteer.saes import save_sae

    root = tmp_path_factory.mktemp("saved")
    small_model().save_pretrained(root / "model")
    gpt2_tokenizer.save_pretrained(root / "model")
    save_sae(small_sae(), root / "sae")
    (root / "ref.txt").write_text(REF)
    return root


@pytest.fixture(scope="module")
def steerer(saved):
    from saesteer import Steerer

    return Steerer(str(saved / "model"), str(saved / "sae"))


@pytest.fixture(scope="module")
def whole(saved, steerer):
    """The sweep in one process: what every distributed run must reproduce byte for byte."""
    from saesteer.sweep import Sweep

    out = saved / "whole"
    Sweep(steerer, features=FEATURES, values=VALUES, batch_size=BATCH, reference_text=saved / "ref.txt",
          cache_dir=saved / "cache", out=out).results()
    return out


def crashing_worker(fault_file):
    """A SweepWorker that dies (``os._exit``) half-way through the chunk that holds ``fault['feature']``, at most
    ``fault['times']`` times over all workers (each death claims a marker file in ``fault['dir']``), where
    ``fault`` is the JSON in ``fault_file`` when the chunk starts. Defined in a function, so that Ray sends the
    class itself to its workers; Ray keeps the first definition of an actor class it was sent, so the fault is
    read from the file, not kept in the class."""
    from saesteer.sweep.distributed import SweepWorker

    class CrashingWorker(SweepWorker):
        def run(self, features):
            fault = json.loads(Path(fault_file).read_text())
            if fault["feature"] in features:
                for i in range(fault["times"]):
                    try:
                        fd = os.open(Path(fault["dir"]) / f"crash.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        continue
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    super().run(features[: max(1, len(features) // 2)])
                    os._exit(1)
            return super().run(features)

    return CrashingWorker


def by_feature(folder):
    from saesteer.sweep.store import load_records

    out = {}
    for r in load_records(folder):
        out.setdefault(r["feature"], []).append(r)
    return out


def test_cli_ray_finishes_a_single_process_folder_identically(ray_local, saved, steerer, whole, tmp_path, monkeypatch):
    from saesteer.cli.main import run
    from saesteer.sweep import Sweep, top

    monkeypatch.setenv("SAESTEER_CACHE", str(saved / "cache"))
    out = tmp_path / "sw"
    it = Sweep(steerer, features=FEATURES, values=VALUES, batch_size=BATCH, reference_text=saved / "ref.txt",
               out=out).run()
    for _ in range(BATCH):  # one call: 4 features done in this process
        next(it)
    it.close()
    assert run(["sweep", "--model", str(saved / "model"), "--sae", str(saved / "sae"), "--features", FEATURES,
                "--values", "20,-10", "--batch-size", str(BATCH), "--reference-text", str(saved / "ref.txt"),
                "--out", str(out), "--quiet", "--ray", "--workers", "2"]) == 0
    assert ray_local.is_initialized()  # a Ray this process already had is left running
    assert (out / "results.jsonl").read_bytes() == (whole / "results.jsonl").read_bytes()
    assert (out / "sentences.txt").read_bytes() == (whole / "sentences.txt").read_bytes()
    m, mw = (json.loads((d / "manifest.json").read_text()) for d in (out, whole))
    assert set(m) == set(mw) and m["fingerprint"] == mw["fingerprint"] and m["sweep"] == mw["sweep"]
    assert m["baseline"] == mw["baseline"] and m["facts"] == mw["facts"]
    assert m["status"] == "complete" and m["done"] == m["n_features"] == 24
    assert [s["features"] for s in m["sessions"]] == [4, 20]
    assert m["sessions"][1]["ray"]["workers"] == 2 and "ray" not in m["sessions"][0]
    assert [r.to_dict() for r in top(out, n=5)] == [r.to_dict() for r in top(whole, n=5)]


def test_killed_workers_chunks_are_retried_nothing_lost_or_doubled(ray_local, saved, steerer, whole, tmp_path,
                                                                   monkeypatch):
    from saesteer.sweep import distributed, distributed_sweep
    from saesteer.sweep.store import load_records

    out = tmp_path / "sw"
    common = dict(out=out, features=FEATURES, values=VALUES, batch_size=BATCH, reference_text=saved / "ref.txt",
                  cache_dir=saved / "cache", workers=2)
    want = by_feature(whole)

    # 1. The worker that takes feature 13 dies half-way through its chunk, every time; no retries allowed: the
    #    sweep stops with a one-line error, and the folder holds whole features, each once, each as it should be.
    crash = tmp_path / "crash-always"
    crash.mkdir()
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"dir": str(crash), "feature": 13, "times": 100}))
    monkeypatch.setattr(distributed, "SweepWorker", crashing_worker(fault))
    with pytest.raises(SaesteerError, match=r"features 12\.\.14 failed 1 times .*worker lost.*resume"):
        distributed_sweep(str(saved / "model"), str(saved / "sae"), max_retries=0, **common)
    assert len(list(crash.iterdir())) == 1
    partial = by_feature(out)
    assert 13 not in partial and all(partial[f] == want[f] for f in partial)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(partial)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "running" and m["done"] == len(partial)

    # 2. Resumed (with the driver's own Steerer, its weights sent through Ray): the chunk's worker dies once,
    #    a fresh worker takes the chunk again, and the folder ends as the single-process sweep's, byte for byte.
    crash = tmp_path / "crash-once"
    crash.mkdir()
    fault.write_text(json.dumps({"dir": str(crash), "feature": 13, "times": 1}))
    m = distributed_sweep(steerer, max_retries=2, **common)
    assert [p.name for p in crash.iterdir()] == ["crash.0"]  # a worker did die mid-chunk
    assert m["status"] == "complete" and m["done"] == 24 and len(m["sessions"]) == 2
    assert m["sessions"][1]["features"] == 24 - len(partial)
    assert (out / "results.jsonl").read_bytes() == (whole / "results.jsonl").read_bytes()
    assert (out / "sentences.txt").read_bytes() == (whole / "sentences.txt").read_bytes()
    assert len(load_records(out)) == 48
    # Finished: the same call has nothing left to do (and starts no worker).
    assert distributed_sweep(steerer, **common)["sessions"] == m["sessions"]
