"""Outputs are checked before any work, an SAE folder is never overwritten by accident, and a trained SAE
replaces an old one as a whole, even when the process is killed in the middle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from saesteer.cli.main import run
from saesteer.errors import SaesteerError
from saesteer.outputs import check_output_file, check_output_folder, clean_leftovers, staged_folder

HOOK = "blocks.2.hook_resid_post"
TINY_TRAIN = ["--hook", HOOK, "--latents", "16", "--k", "2", "--tokens", "256", "--seq-len", "32",
              "--eval-tokens", "0", "--epochs", "1", "--batch-size", "128", "--quiet"]
NO_MODEL = "/nonexistent/model"  # a command that started work would fail on this instead


def _one_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("args", [
    ["train-sae", "--model", NO_MODEL, "--hook", HOOK, "--out", "/proc/sae"],
    ["validate", "--model", NO_MODEL, "--out", "/proc/validation"],
    ["sweep", "--model", NO_MODEL, "--out", "/proc/sweep"],
    ["merge", "{tmp}", "--out", "/proc/merged"],
    ["feature", "3", "--model", NO_MODEL, "--out", "/proc/card.html"],
    ["compare", "--model", NO_MODEL, "--clamp", "3=2", "--out", "/proc/report.html"],
    ["compare", "--model", NO_MODEL, "--clamp", "3=2", "--plot", "/proc/plot.png"],
    ["batch", "--model", NO_MODEL, "--features", "0:2", "--out", "/proc/b.txt"],
    ["demo", "--model", NO_MODEL, "--out", "/proc/demo.txt"],
])
def test_unwritable_outputs_fail_at_once(capsys, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run(args) == 2
    err = _one_line(capsys)
    assert "/proc/" in err and NO_MODEL not in err


@pytest.mark.parametrize("args", [
    ["batch", "--model", NO_MODEL, "--features", "0:2", "--out", "{tmp}/missing/dir/f.txt"],
    ["compare", "--model", NO_MODEL, "--clamp", "3=2", "--out", "{tmp}/missing/r.html"],
    ["feature", "3", "--model", NO_MODEL, "--out", "{tmp}/missing/c.html"],
])
def test_a_file_output_in_a_missing_folder_is_refused_not_created(capsys, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run(args) == 2
    assert "does not exist; create it first" in _one_line(capsys)
    assert not (tmp_path / "missing").exists()


def test_output_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaesteerError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(SaesteerError, match="is a file"):
        check_output_folder(tmp_path / "f")
    with pytest.raises(SaesteerError, match="is a file"):
        check_output_folder(tmp_path / "f" / "sub")
    for check in (check_output_file, check_output_folder):  # found by the fuzz: once an OSError
        with pytest.raises(SaesteerError, match="too long"):
            check(tmp_path / ("x" * 300))
        with pytest.raises(SaesteerError, match="null byte"):
            check(tmp_path / "a\x00b")
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # and leaves no probe file


def test_sweep_api_checks_its_folder_before_work(tiny_loaded, tiny_sae):
    from saesteer.steerer import Steerer
    from saesteer.sweep.runner import Sweep

    with pytest.raises(SaesteerError, match="/proc/sw"):
        Sweep(Steerer(tiny_loaded, tiny_sae), features="0:2", out="/proc/sw")


def _train(model_dir, out, *extra):
    return run(["train-sae", "--model", str(model_dir), *TINY_TRAIN, *extra, "--out", str(out)])


def test_train_sae_refuses_to_overwrite_an_sae_unless_asked(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "sae"
    assert _train(tiny_model_dir, out, "--latents", "32") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["cfg.json", "sae_weights.safetensors", "training.json"]
    capsys.readouterr()
    assert _train(tiny_model_dir, out) == 2  # 16 latents would silently have replaced 32
    assert "already holds an SAE; pass --overwrite" in _one_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _train(tiny_model_dir, out, "--overwrite") == 0
    assert json.loads((out / "cfg.json").read_text())["d_sae"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    left = [p.name for p in tmp_path.iterdir()]
    assert sorted(left) == [".sae.lock", "sae"]  # no staging or old copies left (the lock file stays, unlocked)


def test_train_sae_never_writes_into_an_unrelated_folder(capsys, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    for extra in ([], ["--overwrite"]):
        assert run(["train-sae", "--model", NO_MODEL, *TINY_TRAIN, *extra, "--out", str(out)]) == 2
        assert "holds no SAE" in _one_line(capsys)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def test_train_sae_into_an_empty_folder(tmp_path, tiny_model_dir):
    out = tmp_path / "empty"
    out.mkdir()
    assert _train(tiny_model_dir, out) == 0
    assert (out / "cfg.json").is_file()


def _old_sae(folder):
    folder.mkdir()
    (folder / "cfg.json").write_text('{"d_sae": 256}')
    (folder / "sae_weights.safetensors").write_bytes(b"old weights")


def test_a_failure_while_staging_leaves_the_old_folder(tmp_path):
    target = tmp_path / "sae"
    _old_sae(target)
    with pytest.raises(RuntimeError):
        with staged_folder(target, replace=True) as staging:
            (staging / "sae_weights.safetensors").write_bytes(b"new weights")
            raise RuntimeError("killed between files")
    assert (target / "cfg.json").read_text() == '{"d_sae": 256}'
    assert (target / "sae_weights.safetensors").read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from saesteer import outputs
    target, when = Path(sys.argv[1]), sys.argv[2]
    real = os.replace
    calls = []
    def replace(a, b):
        calls.append(1)
        if when == "between-renames" and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b)
    outputs.os.replace = replace
    with outputs.staged_folder(target, replace=True) as staging:
        (staging / "sae_weights.safetensors").write_bytes(b"new weights")
        if when == "between-files":
            os.kill(os.getpid(), signal.SIGKILL)
        (staging / "cfg.json").write_text('{"d_sae": 128}')
""")


@pytest.mark.parametrize("when", ["between-files", "between-renames"])
def test_sigkill_during_a_folder_swap_never_mixes_old_and_new(tmp_path, when):
    target = tmp_path / "sae"
    _old_sae(target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(target), when], env=env)
    assert proc.returncode == -signal.SIGKILL
    if when == "between-renames":
        assert not target.exists()  # the old folder is aside, the new one not yet in: no mix is readable
    clean_leftovers(target)  # what the next train-sae (or staged_folder) does first
    assert (target / "cfg.json").read_text() == '{"d_sae": 256}'
    assert (target / "sae_weights.safetensors").read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_an_unwritable_facts_cache_costs_time_not_the_result(capsys, caplog, monkeypatch, tiny_model_dir,
                                                             tiny_sae_pt):
    monkeypatch.setenv("SAESTEER_CACHE", "/proc/saesteer-cache")
    args = ["compare", "--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", "blocks.6.hook_resid_post",
            "--clamp", "3=2", "--max-new-tokens", "2", "--reference-samples", "2", "--reference-length", "8", "--json"]
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, dict) and out  # the comparison is there
    assert "could not cache feature facts in /proc/saesteer-cache" in caplog.text


def test_train_sae_locks_its_folder_for_the_whole_run(capsys, tmp_path):
    from saesteer.locks import FolderLock

    out = tmp_path / "sae"
    with FolderLock(out, what="SAE folder"):  # another run is writing this SAE
        assert run(["train-sae", "--model", NO_MODEL, *TINY_TRAIN, "--out", str(out)]) == 2
        err = _one_line(capsys)
        assert "is in use" in err and f"pid {os.getpid()}" in err and NO_MODEL not in err
    assert run(["train-sae", "--model", NO_MODEL, *TINY_TRAIN, "--out", str(out)]) == 2
    assert NO_MODEL in _one_line(capsys)  # free again: the run gets as far as the model
    assert not out.exists()
