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
