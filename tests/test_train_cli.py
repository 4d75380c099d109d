"""saesteer train-sae: a TopK SAE from self-generated text or a text file, saved in SAELens format, loaded back
by saesteer's own loader; deterministic for a seed. On the real stories260K model (skipped where ../shared is
absent) and on a tiny random GPT-2 (the other architecture)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from saesteer.cli.main import run
from saesteer.saes import load_sae

HOOK = "blocks.2.hook_resid_post"
SMALL = ["--latents", "64", "--k", "4", "--tokens", "6000", "--seq-len", "64", "--eval-tokens", "2048",
         "--epochs", "1", "--batch-size", "256"]


def _train(tmp_path, model, name, *extra):
    out = tmp_path / name
    code = run(["train-sae", "--model", str(model), "--hook", HOOK, *SMALL, *extra, "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_self_generated_sae_loads_and_is_deterministic(tmp_path, stories_path):
    a = _train(tmp_path, stories_path, "a", "--self-generate", "--seed", "3")
    b = _train(tmp_path, stories_path, "b", "--seed", "3")  # self-generation is the default
    c = _train(tmp_path, stories_path, "c", "--seed", "4")
    sae = load_sae(str(a))
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (64, 64, 4)
    assert sae.hook_name == HOOK and sae.cfg.activation == "topk" and sae.cfg.normalize == "layer_norm"
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)  # unit-norm decoder rows
    cfg = json.loads((a / "cfg.json").read_text())
    assert cfg["hook_name"] == HOOK and cfg["d_sae"] == 64 and cfg["model_name"]
    wa, wb, wc = (load_file(str(p / "sae_weights.safetensors")) for p in (a, b, c))
    assert all(torch.equal(wa[key], wb[key]) for key in wa)  # same seed: identical weights
    assert not torch.equal(wa["W_dec"], wc["W_dec"])
    info = json.loads((a / "training.json").read_text())
    for key in ("variance_explained", "l0", "dead_fraction", "steps", "tokens", "train_seconds", "eval"):
        assert key in info
    assert info["eval"] == "held-out" and info["tokens"] == 6000 and info["source"]["self_generate"]
    assert info["variance_explained"] > 0.5 and 0 < info["l0"] <= 4
    # the saved SAE steers through the other commands
    assert run(["generate", "--model", str(stories_path), "--sae", str(a), "--clamp", "0=5",
                "--max-new-tokens", "3"]) == 0


def test_progress_bar_shows_loss_variance_l0_and_dead(tmp_path, stories_path, capsys):
    out = tmp_path / "p"
    assert run(["train-sae", "--model", str(stories_path), "--hook", HOOK, *SMALL, "--eval-tokens", "0",
                "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for field in ("loss=", "ve=", "l0=", "dead="):
        assert field in err
    assert "variance explained" in err and "training tokens" in err  # --eval-tokens 0: measured on training data


def test_text_file_on_a_gpt2_model(tmp_path, tiny_model_dir):
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat and looked at the dog. " * 200, encoding="utf-8")
    out = tmp_path / "g"
    assert run(["train-sae", "--model", str(tiny_model_dir), "--hook", "blocks.3.hook_resid_pre", "--latents", "32",
                "--k", "4", "--tokens", "1500", "--text", str(text), "--eval-tokens", "200", "--seq-len", "64",
                "--quiet", "--out", str(out)]) == 0
    sae = load_sae(str(out))
    assert sae.hook_name == "blocks.3.hook_resid_pre" and sae.d_in == 64 and sae.d_sae == 32
    info = json.loads((out / "training.json").read_text())
    assert info["tokens"] == 1500 and info["source"]["text"] == str(text) and info["eval"] == "held-out"


@pytest.mark.parametrize("args, message", [
    (["--text", "{text}", "--self-generate"], "not both"),
    (["--latents", "8", "--k", "9"], "larger than --latents"),
    (["--hook", "blocks.99.hook_resid_post"], "99"),
    (["--separator", "\n\n"], "--separator goes with --text"),
])
def test_errors_are_one_line(tmp_path, tiny_model_dir, capsys, args, message):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 50, encoding="utf-8")
    args = [a.replace("{text}", str(text)) for a in args]
    base = ["train-sae", "--model", str(tiny_model_dir), "--hook", HOOK, "--tokens", "100", "--quiet",
            "--out", str(tmp_path / "o")]
    assert run(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
