"""Issue 8 item 10: models/ is the lowest layer, and no test-only hooks in production code
(tests/test_library_layering.py: no library module imports a top-level script)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in the file (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_import_nothing_from_stylecap():
    offenders = {p.name: "stylecap" for p in (ROOT / "models").glob("*.py") if "stylecap" in _imports(p)}
    assert not offenders, f"models/ is the lowest layer but imports stylecap: {offenders}"


def test_no_test_hooks_in_production_code():
    hooks = ("STYLECAP_TEST_SIGNAL", "STYLECAP_DIE_AFTER_CHUNKS")
    found = [(str(p.relative_to(ROOT)), h) for p in list(ROOT.glob("*.py")) + list((ROOT / "stylecap").glob("*.py"))
             + list((ROOT / "models").glob("*.py")) for h in hooks if h in p.read_text(encoding="utf-8")]
    assert not found, f"test-only hooks in production code: {found}"
