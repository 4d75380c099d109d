"""The small traps a newcomer met in a first hour, each pinned down (issue 14, item 6)."""

import pytest

from saesteer import Steerer, assets
from saesteer.cli.main import run
from saesteer.errors import SaesteerError

EMB = ["--model", "stories260K", "--sae", "stories260K"]


def test_sae_used_at_another_hook_than_it_names_is_refused_unless_forced(capsys):
    with pytest.raises(SaesteerError, match="trained at blocks.2.hook_resid_post, not blocks.3.hook_resid_post"):
        Steerer("stories260K", "stories260K", hook="blocks.3.hook_resid_post")
    st = Steerer("stories260K", "stories260K", hook="blocks.3.hook_resid_post", force_hook=True)
    assert st.hook_name == "blocks.3.hook_resid_post"
    assert Steerer("stories260K", "stories260K", hook=assets.EMBEDDED_HOOK).hook_name == assets.EMBEDDED_HOOK

    args = ["generate", *EMB, "--hook", "blocks.3.hook_resid_post", "--max-new-tokens", "2"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force-hook" in err
    assert run([*args, "--force-hook"]) == 0


def test_model_folder_without_config_json_is_one_line(tmp_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    assert run(["generate", "--model", str(tmp_path), "--sae", "stories260K"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.json" in err and "Traceback" not in err


def test_steerer_repr_says_what_it_holds():
    text = repr(Steerer("stories260K", "stories260K"))
    assert "stories260K" in text and "1024 latents" in text and assets.EMBEDDED_HOOK in text
    assert "260,032 parameters" in text and "object at 0x" not in text


def test_prompt_file_gives_one_prompt_per_line(tmp_path, capsys):
    import json

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nThe dog\n", encoding="utf-8")
    assert run(["generate", *EMB, "--prompt-file", str(prompts), "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["prompt"] for o in out] == ["Once upon a time", "The dog"]
    st = Steerer("stories260K", "stories260K")
    assert out[1]["text"] == st.generate("The dog", max_new_tokens=3).text

    assert run(["generate", *EMB, "--prompt", str(prompts), "--max-new-tokens", "1"]) == 0
    assert "--prompt-file" in capsys.readouterr().err  # a file name given as --prompt: say what happened

    sentences = tmp_path / "s.txt"
    assert run(["batch", *EMB, "--features", "3:5", "--value", "4", "--prompt-file", str(prompts),
                "--max-new-tokens", "3", "--out", str(sentences)]) == 0
    capsys.readouterr()
    rows = [line.split("\t") for line in sentences.read_text().splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("3", "Once upon a time"), ("4", "Once upon a time"),
                                            ("3", "The dog"), ("4", "The dog")]
    assert rows[2][2] == st.generate("The dog", clamps={3: 4.0}, max_new_tokens=3).text

    assert run(["compare", *EMB, "--prompt-file", str(prompts), "--clamp", "3=4", "--no-facts", "--json",
                "--max-new-tokens", "3"]) == 0
    assert [p["prompt"] for p in json.loads(capsys.readouterr().out)["prompts"]] == ["Once upon a time", "The dog"]


def test_demo_labels_norms_and_its_closing_hint_keeps_the_model_and_sae(tmp_path, capsys):
    out = tmp_path / "d.txt"
    assert run(["demo", *EMB, "--value", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "activation at the last position: norm" in text and "mean norm over the" in text
    hint = text.strip().splitlines()[-1]
    assert "saesteer sweep --model stories260K --sae stories260K" in hint
    assert "\x00" not in text


def test_top_explains_its_hits_column(tmp_path, capsys):
    out = tmp_path / "sw"
    assert run(["sweep", *EMB, "--features", "0:3", "--values", "4", "--max-new-tokens", "3",
                "--reference-samples", "8", "--reference-length", "16", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert run(["top", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hits" in text.splitlines()[0] and "hits W/L: W = words" in text


def test_validate_default_model_loads_from_any_folder(tmp_path, monkeypatch):
    from saesteer.models.loading import load_model
    from saesteer.validation import DEFAULT_MODEL

    monkeypatch.chdir(tmp_path)
    assert load_model(DEFAULT_MODEL).model.config.hidden_size == 64


def test_readme_commands_outputs_are_ignored_and_extras_match_the_makefile():
    import re
    import shutil
    import subprocess

    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    extras = re.search(r"^EXTRAS \?= (\S+)", makefile, re.M).group(1)
    assert f'-e ".[{extras}]"' in readme
    assert "pip install -q" not in makefile and "--progress-bar on" in makefile
    if shutil.which("git") and (REPO_ROOT / ".git").exists():
        for path in ("demo_sentences.txt", "sae260k/cfg.json", "validation/report.json", "sweep/manifest.json",
                     "practical_session_out/x.txt"):
            proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
            assert proc.returncode == 0, f"{path} is not in .gitignore"


def test_readme_offline_route_is_runnable_as_written():
    """Every `.venv/bin/saesteer ...` line of the README's offline block parses with today's options."""
    import re
    import shlex

    from conftest import REPO_ROOT
    from saesteer.cli.main import cli

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## Offline use"):readme.index("## Layout")]
    code = re.search(r"```bash\n(.*?)```", block, re.S).group(1).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in code.splitlines() if line.strip()]
    assert lines and all(line.startswith(".venv/bin/saesteer ") for line in lines)
    for line in lines:
        args = shlex.split(line)[1:]
        cli.commands[args[0]].make_context(args[0], args[1:])
    offline = (REPO_ROOT / "docs" / "offline.md").read_text(encoding="utf-8")
    assert "pip install -c constraints.txt jupyterlab" in offline
    assert all(m.start() >= 10 and offline[m.start() - 10:m.start()] == ".venv/bin/"
               for m in re.finditer(r"jupyter lab", offline))
