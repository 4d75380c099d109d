"""Every test the guide's "Guarantees" section names exists, so the section cannot promise what no test checks."""

from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT


def test_every_guarantee_names_an_existing_test():
    guide = (REPO_ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = guide.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 15
    for module, name in named:
        tree = ast.parse((REPO_ROOT / "tests" / module).read_text(encoding="utf-8"))
        tests = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in tests, f"docs/guide.md names {module}::{name}, which does not exist"
