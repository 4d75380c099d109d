"""The documentation site builds with `mkdocs build --strict` (warnings are errors), as `make docs` does.

The CLI reference is generated from the click group and the API reference from the docstrings, so this also
fails when a docstring or a command stops rendering, or when a page links to something that is not there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocs_click", reason="needs the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for page in ("index.html", "guide.html", "cli.html", "api.html", "offline.html"):
        assert (site / page).is_file(), page
    cli = (site / "cli.html").read_text(encoding="utf-8")
    for command in ("generate", "reconstruct", "batch", "demo"):
        assert f"saesteer {command}" in cli
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("Steerer", "generate_many", "batch_features", "SAEClamp", "record", "load_sae"):
        assert name in api
    # Built-in theme, no remote scripts or fonts: the pages work offline.
    assert "cdnjs" not in cli and "fonts.googleapis" not in cli
