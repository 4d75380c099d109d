"""The core CLI on local model and SAE paths: generate, reconstruct, batch, demo, and its errors."""

import json
import os
import subprocess
import sys

import pytest

from saesteer.cli.main import run

HOOK = "blocks.6.hook_resid_post"


@pytest.fixture()
def base(tiny_model_dir, tiny_sae_pt):
    return ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]


def run_json(capsys, args):
    assert run(args) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_fields_and_equality_with_api(capsys, base, tiny_loaded, tiny_sae):
    from saesteer.steerer import Steerer

    out = run_json(capsys, ["generate", *base, "--prompt", "Happiness is", "--clamp", "3=20", "--json"])
    for key in ("model", "sae", "hook", "mode", "prompt", "clamps", "prompt_tokens", "tokens", "text"):
        assert key in out
    assert out["prompt_tokens"] == [50256, 39, 42661, 318]
    assert out["clamps"] == [{"feature": 3, "value": 20.0}]
    assert out["hook"] == HOOK and out["mode"] == "delta" and len(out["tokens"]) == 10
    st = Steerer(tiny_loaded, tiny_sae)
    api = st.generate("Happiness is", clamps={3: 20.0})
    assert out["tokens"] == api.tokens and out["text"] == api.text
    assert api.tokens != st.generate("Happiness is").tokens


def test_generate_bos_only_and_sampling(capsys, base):
    out = run_json(capsys, ["generate", *base, "--json", "--max-new-tokens", "5"])
    assert out["prompt_tokens"] == [50256] and out["prompt"] is None
    a = run_json(capsys, ["generate", *base, "--json", "--temperature", "1", "--seed", "4"])
    b = run_json(capsys, ["generate", *base, "--json", "--temperature", "1", "--seed", "4"])
    assert a["tokens"] == b["tokens"]


def test_reconstruct_json(capsys, base):
    out = run_json(capsys, ["reconstruct", *base, "--prompt", "Happiness is a warm puppy", "--json"])
    assert 0 < out["l0"] <= 8  # TopK(8)
    assert -1 <= out["cosine"] <= 1 and out["mse"] >= 0
    assert out["next_token"] and len(out["top_features"]) >= 1


def test_batch_writes_one_line_per_feature(tmp_path, capsys, base, tiny_loaded, tiny_sae):
    from saesteer.steerer import Steerer

    out = tmp_path / "sentences.txt"
    assert run(["batch", *base, "--features", "0:6", "--offset", "10", "--value", "20", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert [int(l.split("\t")[0]) for l in lines] == list(range(10, 16))
    st = Steerer(tiny_loaded, tiny_sae)
    assert lines[2].split("\t", 1)[1] == st.generate(None, clamps={12: 20.0}).text.replace("\n", "\\n")


def test_demo_runs_every_step(tmp_path, capsys, base):
    out = tmp_path / "demo.txt"
    assert run(["demo", *base, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for step in range(10):
        assert f"Step {step}:" in text
    assert len(out.read_text().splitlines()) == 8


@pytest.mark.parametrize("args, message", [
    (["generate", "--clamp", "256=1"], "outside [0, 256)"),
    (["generate", "--clamp", "3=nan"], "finite"),
    (["generate", "--clamp", "3"], "FEATURE=VALUE"),
    (["batch", "--features", "250:300", "--out", "x.txt"], "[0, 256)"),
])
def test_bad_input_is_one_line_exit_2(capsys, base, args, message):
    assert run([args[0], *base, *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_hook_and_width_mismatch(capsys, tiny_model_dir, tiny_sae_pt):
    assert run(["generate", "--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", "blocks.6.resid"]) == 2
    assert "unknown hook name" in capsys.readouterr().err
    assert run(["generate", "--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", "blocks.6.mlp.hook_post"]) == 2
    assert "64-wide" in capsys.readouterr().err


def test_missing_model_offline_says_how_to_fix(tmp_path, tiny_sae_pt):
    """An explicit --sae is kept (no fall-back to the embedded pair), so the missing model is an error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "saesteer.cli.main", "generate", "--model", "gpt2-small",
                           "--sae", str(tiny_sae_pt)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "--model PATH" in err[0]


def test_unknown_sae_spec(capsys, tiny_model_dir):
    assert run(["generate", "--model", str(tiny_model_dir), "--sae", "nonsense:thing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
