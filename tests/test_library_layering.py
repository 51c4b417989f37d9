"""Issue 8 item 10: models/ is the lowest layer, library code never imports a top-level script, no
test-only hooks in production code, and the metrics modules stay small."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # evaluate, train, predict, process_* ...


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_library_module_imports_a_top_level_script():
    assert {"evaluate", "train", "predict"} <= SCRIPTS
    bad = {f"{p.relative_to(ROOT)} imports {sorted(_imported(p) & SCRIPTS)}"
           for folder in ("stylecap", "models") for p in (ROOT / folder).rglob("*.py") if _imported(p) & SCRIPTS}
    assert not bad


def test_metrics_modules_are_split_below_400_lines():
    modules = ["metrics", "coco_metrics", "ptb_tokenize", "segmentation", "clipscore", "diversity", "matching",
               "tables", "scoring", "eval_inputs"]
    sizes = {m: len((ROOT / "stylecap" / f"{m}.py").read_text(encoding="utf-8").splitlines())
             for m in modules if (ROOT / "stylecap" / f"{m}.py").exists()}
    assert len(sizes) >= 8 and all(n <= 400 for n in sizes.values()), sizes


def test_models_import_nothing_from_stylecap():
    offenders = [p.name for p in (ROOT / "models").glob("*.py") if "stylecap" in _imported(p)]
    assert not offenders, f"models/ is the lowest layer but these import stylecap: {offenders}"


def test_no_test_hooks_in_production_code():
    hooks = ("STYLECAP_TEST_SIGNAL", "STYLECAP_DIE_AFTER_CHUNKS")
    files = list(ROOT.glob("*.py")) + list((ROOT / "stylecap").glob("*.py")) + list((ROOT / "models").glob("*.py"))
    found = [(str(p.relative_to(ROOT)), h) for p in files for h in hooks if h in p.read_text(encoding="utf-8")]
    assert not found, f"test-only hooks in production code: {found}"
