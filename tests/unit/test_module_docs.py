"""Every module's DOCUMENTATION, EXAMPLES and RETURN parse as YAML.

ansible-lint reports an unparsable DOCUMENTATION as an [ERROR] line but still passes, and
only the (slower) sanity tier failed on it; this catches it in the fast tier.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

MODULES = sorted((Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("*.py"))


def _docs(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                out[name] = ast.literal_eval(node.value)
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_docs_parse(path: Path) -> None:
    docs = _docs(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, f"{path.name}: {sorted(docs)}"
    for name, text in docs.items():
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as e:
            pytest.fail(f"{path.name} {name} is not valid YAML: {e}")
