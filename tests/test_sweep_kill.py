"""``saesteer sweep`` as a real process: SIGKILL'd mid-run, then the same command finishes the job."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_sweep import REF, small_model, small_sae


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gpt2_tokenizer):
    from saesteer.saes import save_sae

    root = tmp_path_factory.mktemp("saved")
    model = small_model()
    model.save_pretrained(root / "model")
    gpt2_tokenizer.save_pretrained(root / "model")
    save_sae(small_sae(), root / "sae")
    (root / "ref.txt").write_text(REF)
    return root


def command(saved, out, values="20,-10"):
    return [sys.executable, "-m", "saesteer.cli.main", "sweep", "--model", str(saved / "model"), "--sae",
            str(saved / "sae"), "--features", "all", "--values", values, "--batch-size", "2", "--reference-text",
            str(saved / "ref.txt"), "--out", str(out), "--quiet"]


def env(saved):
    # One thread: a tiny model is fastest so, and two threads on a busy machine are many times slower.
    return dict(os.environ, SAESTEER_CACHE=str(saved / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                OMP_NUM_THREADS="1")


def complete_lines(path):
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def test_sigkill_then_same_command_finishes_exactly_once(saved, tmp_path, gpt2_tokenizer, monkeypatch):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(command(saved, out), env=env(saved), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while complete_lines(out / "results.jsonl") < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]  # still running: killed mid-run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    killed_at = complete_lines(out / "results.jsonl")
    assert 4 <= killed_at < 128
    with open(out / "results.jsonl", "ab") as f:  # and as if the kill had cut a write in half
        f.write(b'{"feature": 63, "value": 20.0, "tok')

    t0 = time.time()
    done = subprocess.run(command(saved, out), env=env(saved), capture_output=True, timeout=300)
    print(f"resumed run: {time.time() - t0:.1f}s")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [(r["feature"], r["value"]) for r in recs] == [(f, v) for f in range(64) for v in (20.0, -10.0)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["done"] == 64 and len(manifest["sessions"]) == 2
    assert len((out / "sentences.txt").read_text().splitlines()) == 128

    # Nothing lost or changed: the same sweep run in one go, in this process, gives the same records.
    from saesteer import Steerer
    from saesteer.sweep import Sweep

    monkeypatch.setenv("SAESTEER_CACHE", str(saved / "cache"))
    st = Steerer(small_model(), small_sae(), tokenizer=gpt2_tokenizer)
    whole = Sweep(st, values=[20, -10], reference_text=saved / "ref.txt").results()
    assert recs == [r.to_record() for r in whole]

    # A different command on the same folder is refused, and leaves it as it was.
    before = (out / "results.jsonl").read_bytes()
    other = subprocess.run(command(saved, out, values="20"), env=env(saved), capture_output=True, timeout=300)
    assert other.returncode == 2
    err = other.stderr.decode()
    assert "different sweep" in err and "values" in err and "Traceback" not in err
    assert (out / "results.jsonl").read_bytes() == before


def test_two_sweeps_into_one_folder_the_second_is_refused(saved, tmp_path):
    """The same command twice on one folder: the second is refused in one line naming the first (pid, host);
    the first finishes alone, every (feature, value) once."""
    out = tmp_path / "sweep"
    first = subprocess.Popen(command(saved, out), env=env(saved), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while complete_lines(out / "results.jsonl") < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)  # mid-run, holding the folder, however fast the machine
    try:
        assert first.poll() is None, first.communicate()[1].decode()[-2000:]
        second = subprocess.run(command(saved, out), env=env(saved), capture_output=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    err = second.stderr.decode().strip()
    assert second.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "in use" in err and f"pid {first.pid} on " in err
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1.decode()[-2000:]
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["feature"], r["value"]) for r in recs] == [(f, v) for f in range(64) for v in (20.0, -10.0)]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
