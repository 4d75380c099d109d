"""examples/practical_session.ipynb runs top to bottom (on the embedded stories260K, with an SAE it trains in
seconds; nothing outside the package is needed).

The notebook reads its parameters from ``SAESTEER_NB_*`` environment variables; the kernel inherits this
process's environment. The kernel is ipykernel's ``python3``, run with this interpreter (jupyter_client
replaces the spec's ``python`` by ``sys.executable``; with no spec installed, ipykernel's native one is used),
so a fresh virtual environment needs nothing registered.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "examples" / "practical_session.ipynb"


def _load():
    nbformat = pytest.importorskip("nbformat", reason="needs the docs extra: pip install -e '.[docs]'")
    return nbformat, nbformat.read(NOTEBOOK, as_version=4)


def _outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def test_notebook_is_clean_and_defaults_to_gpt2_small():
    nbformat, nb = _load()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    params = code[0].source
    assert 'MODEL = "gpt2-small"' in params
    assert 'SAE = "openai:v5_32k/resid_post_mlp/6"' in params
    assert "SAESTEER_NB_" in params
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebook_uses_only_public_api_without_guards():
    """No try/except ImportError around saesteer's own modules, and nothing from saesteer.cli's internals."""
    _, nb = _load()
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "except ImportError" not in code
    assert "saesteer.cli" not in code


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebook_runs_on_stories260k(tmp_path, monkeypatch):
    stories = "stories260K"
    nbformat, nb = _load()
    nbclient = pytest.importorskip("nbclient", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("ipykernel", reason="needs the docs extra: pip install -e '.[docs]'")

    out = tmp_path / "out"
    env = {
        "SAESTEER_NB_MODEL": str(stories),
        "SAESTEER_NB_HOOK": "blocks.2.hook_resid_post",
        "SAESTEER_NB_TRAIN_SAE": "1",
        "SAESTEER_NB_TRAIN_D_SAE": "256",
        "SAESTEER_NB_TRAIN_K": "8",
        "SAESTEER_NB_TRAIN_TOKENS": "4096",
        "SAESTEER_NB_TRAIN_STEPS": "150",
        "SAESTEER_NB_PROMPT": "Once upon a time",
        "SAESTEER_NB_VALUE": "6",
        "SAESTEER_NB_N_EXPLORE": "64",
        "SAESTEER_NB_REFERENCE_SAMPLES": "32",
        "SAESTEER_NB_OUT": str(out),
        "SAESTEER_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # A tiny model: one thread is faster, and much faster on a busy machine.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # the failing cell's traceback, in short
        pytest.fail(f"the notebook failed:\n{str(exc)[-3000:]}")

    text = "\n".join(_outputs(c) for c in nb.cells if c.cell_type == "code")
    assert "IProgress" not in text and "TqdmWarning" not in text
    assert "max activation" in text  # the feature's scale is shown where VALUE is used
    assert "trained SAE(d_in=64, d_sae=256" in text
    assert "variance explained" in text
    lines = (out / "sentences_0_16.txt").read_text(encoding="utf-8").splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(16))
    assert len((out / "explore_0_64.txt").read_text(encoding="utf-8").splitlines()) == 64
    assert (out / "trained_sae" / "cfg.json").exists()

    manifest = json.loads((out / "sweep" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "complete" and manifest["done"] == 256
    assert (out / "compare.html").exists()
    assert "saesteer serve --model" in text and "--results" in text
