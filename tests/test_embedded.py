"""The embedded stories260K model and SAE: the demo runs offline from anywhere, with nothing outside the package."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from saesteer import assets
from saesteer.defaults import DEFAULT_MODEL, DEFAULT_SAE, choose

SRC = Path(__file__).resolve().parents[1] / "src"


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unreachable_env(tmp_path, **extra) -> dict:
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SAESTEER_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), SAESTEER_CACHE=str(tmp_path / "cache"),
               HF_ENDPOINT=f"http://127.0.0.1:{port}", SAESTEER_OPENAI_BASE_URL=f"http://127.0.0.1:{port}/sae/",
               PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)
    return env


def test_embedded_files_and_licence_are_in_the_package():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "LICENSE"):
        assert (assets.MODEL_DIR / name).is_file(), name
    assert "MIT" in (assets.MODEL_DIR / "LICENSE").read_text()
    assert "karpathy/tinyllamas" in (assets.MODEL_DIR / "README.md").read_text()
    assert (assets.SAE_DIR / "sae_weights.safetensors").stat().st_size < 1_000_000


def test_embedded_pair_loads_by_name_and_generates_a_story():
    from saesteer import Steerer

    st = Steerer("stories260K", "stories260k")
    assert st.hook_name == assets.EMBEDDED_HOOK and st.sae.d_sae == 1024
    assert st.generate("Once upon a time", max_new_tokens=6).text.startswith(", there was a little")
    assert st.reconstruct("Once upon a time, there was a little girl").stats.variance_explained > 0.8


def test_defaults_fall_back_to_the_embedded_pair_when_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    choice = choose(DEFAULT_MODEL, DEFAULT_SAE, None)
    assert (choice.model, choice.sae) == ("stories260K", "stories260K") and "offline" in choice.note
    assert choose("some/model", DEFAULT_SAE, None).model == "some/model"  # an explicit choice is kept
    assert choose(DEFAULT_MODEL, DEFAULT_SAE, "blocks.3.hook_resid_post").note is None


def test_generate_json_names_the_embedded_pair_it_ran_offline(monkeypatch, tmp_path, capsys):
    import json

    from saesteer.cli.main import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    assert run(["generate", "--prompt", "Once upon a time", "--max-new-tokens", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["sae"], out["hook"]) == ("stories260K", "stories260K", assets.EMBEDDED_HOOK)


def test_unreachable_hub_is_noticed_by_a_probe_not_by_retries(monkeypatch, tmp_path):
    for key, value in _unreachable_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    choice = choose(DEFAULT_MODEL, DEFAULT_SAE, None)
    assert choice.model == "stories260K" and "unreachable" in choice.note


@pytest.mark.slow
def test_demo_runs_end_to_end_offline_from_another_folder(tmp_path):
    """No HF_HUB_OFFLINE, hub and SAE storage unreachable, no ../shared, cwd outside the clone: exit 0."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "saesteer.cli.main", "demo"], cwd=cwd, env=_unreachable_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "unreachable" in notes[0] and "stories260K" in notes[0]
    for step in range(10):
        assert f"Step {step}:" in proc.stdout
    assert "Once upon a time, there was a little girl" in proc.stdout
    assert len((cwd / "demo_sentences.txt").read_text().splitlines()) == 8


def test_an_unreachable_sae_host_fails_at_once_without_retries(monkeypatch, tmp_path):
    """Retries with backoff are for dropped connections; a host that does not answer at all fails at once."""
    from saesteer.saes.download import download_file
    from saesteer.errors import SaesteerError

    for key, value in _unreachable_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    sleeps = []
    monkeypatch.setattr("saesteer.saes.download.time.sleep", sleeps.append)
    with pytest.raises(SaesteerError, match="cannot be reached"):
        download_file(f"http://127.0.0.1:{_closed_port()}/6.pt", tmp_path / "6.pt", progress=False, retries=4)
    assert sleeps == []
