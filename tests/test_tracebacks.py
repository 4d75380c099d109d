"""Inputs that used to end in a traceback: a prompt longer than the model's context, and a prompt whose bytes
are not UTF-8 (as a shell passes them: Python keeps them as lone surrogates). Each is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from saesteer.cli.main import run
from saesteer.errors import SaesteerError

HOOK = "blocks.6.hook_resid_post"
BAD = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # Latin-1 bytes given to a UTF-8 program


@pytest.fixture()
def short_model(tiny_model_dir, tiny_sae_pt):
    """The tiny GPT-2 (128 positions) and its SAE."""
    return ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]


def _one_line(capsys) -> str:
    """The error: one line, the last (a note such as the default values' may come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines) and lines[-1].startswith("error: "), lines
    assert [line for line in lines if line.startswith("error")] == lines[-1:], lines
    return "\n".join(lines)


@pytest.mark.parametrize("command", ["reconstruct", "generate", "batch", "compare", "feature"])
def test_a_prompt_longer_than_the_context_is_one_line(capsys, tmp_path, short_model, command):
    extra = {"batch": ["--features", "0:2", "--out", str(tmp_path / "b.txt")],
             "compare": ["--clamp", "3"], "feature": ["3"]}.get(command, [])
    assert run([command, *short_model, "--prompt", "hello " * 200, *extra]) == 2
    err = _one_line(capsys)
    assert "does not fit in the model's 128 positions" in err
    assert "values:" not in err  # refused before any work (batch measures feature scales next)


def test_steerer_api_refuses_long_prompts(tiny_loaded, tiny_sae):
    from saesteer.steerer import Steerer

    st = Steerer(tiny_loaded, tiny_sae)  # 128 positions
    with pytest.raises(SaesteerError, match="does not fit"):
        st.reconstruct("hello " * 200)
    with pytest.raises(SaesteerError, match="max_new_tokens"):
        st.generate("hello " * 120, max_new_tokens=20)
    assert len(st.generate("hello " * 100, max_new_tokens=2).tokens) == 2  # 101 + 1 fits


@pytest.mark.parametrize("command", ["generate", "reconstruct", "compare", "batch", "sweep"])
def test_a_prompt_with_invalid_utf8_is_one_line(capsys, tmp_path, short_model, command):
    extra = {"batch": ["--features", "0:2", "--out", str(tmp_path / "b.txt")],
             "sweep": ["--features", "0:2", "--out", str(tmp_path / "sw")],
             "compare": ["--clamp", "3=2", "--no-facts"]}.get(command, [])
    if command != "reconstruct":
        extra += ["--max-new-tokens", "2"]
    assert run([command, *short_model, "--prompt", BAD, *extra]) == 2
    assert "not valid UTF-8 text (byte 0xe9 at character 3)" in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_invalid_utf8_through_a_real_shell_argument(short_model, tmp_path):
    """The bytes arrive as the shell passes them (argv, surrogateescape), in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), LC_ALL="C.UTF-8")
    code = "import sys; from saesteer.cli.main import main; sys.argv[0] = 'saesteer'; main()"
    args = [sys.executable, "-c", code, "generate", *short_model, "--max-new-tokens", "1"]
    proc = subprocess.run([os.fsencode(a) for a in args] + [b"--prompt", b"caf\xe9"], env=env, capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "Traceback" not in err and "not valid UTF-8" in err, err


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), IndexError("index out of range in self"),
                                 KeyError("x"), OSError(28, "No space left on device")])
def test_any_unexpected_error_is_one_line_and_exit_2(capsys, monkeypatch, exc):
    import saesteer.cli.core_commands as core

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(core, "build_steerer", boom)
    monkeypatch.delenv("SAESTEER_DEBUG", raising=False)
    assert run(["generate", "--model", "m"]) == 2
    err = _one_line(capsys)
    assert err.startswith(f"error: {type(exc).__name__}") and "SAESTEER_DEBUG=1" in err
    monkeypatch.setenv("SAESTEER_DEBUG", "1")
    with pytest.raises(type(exc)):
        run(["generate", "--model", "m"])
