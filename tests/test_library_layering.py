"""Issue 8 item 10 and issue 16: the layers. Scripts -> stylecap packages (extract, train, eval) -> the core
(stylecap/*.py) -> models/. models/ imports nothing above it, the core imports no package, eval never imports extract
or train, extract never imports train or eval, train never imports extract, and library code never imports a
top-level script. No test-only hooks in production code, and the metrics modules stay small."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # evaluate, train, predict, process_* ...
PACKAGES = ("extract", "train", "eval")


def _modules(path: Path) -> set[str]:
    """Every module path imported anywhere in the file (lazy imports inside functions too), dotted in full."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from stylecap import extract`
    return names


def _imported(path: Path) -> set[str]:
    return {m.split(".")[0] for m in _modules(path)}


def _packages_used(path: Path) -> set[str]:
    """Which stylecap packages the file imports from (stylecap.eval.x -> 'eval')."""
    return {m.split(".")[1] for m in _modules(path) if m.startswith("stylecap.") and m.split(".")[1] in PACKAGES}


def test_no_library_module_imports_a_top_level_script():
    assert {"evaluate", "train", "predict"} <= SCRIPTS
    bad = {f"{p.relative_to(ROOT)} imports {sorted(_imported(p) & SCRIPTS)}"
           for folder in ("stylecap", "models") for p in (ROOT / folder).rglob("*.py") if _imported(p) & SCRIPTS}
    assert not bad


def test_metrics_modules_are_split_below_400_lines():
    modules = ["metrics", "coco_metrics", "ptb_tokenize", "segmentation", "clipscore", "diversity", "matching",
               "tables", "scoring", "inputs"]
    sizes = {m: len((ROOT / "stylecap" / "eval" / f"{m}.py").read_text(encoding="utf-8").splitlines())
             for m in modules if (ROOT / "stylecap" / "eval" / f"{m}.py").exists()}
    assert len(sizes) >= 8 and all(n <= 400 for n in sizes.values()), sizes


def test_models_import_nothing_from_stylecap():
    offenders = [p.name for p in (ROOT / "models").glob("*.py") if "stylecap" in _imported(p)]
    assert not offenders, f"models/ is the lowest layer but these import stylecap: {offenders}"


def test_the_core_imports_no_stylecap_package():
    offenders = {p.name: sorted(_packages_used(p)) for p in (ROOT / "stylecap").glob("*.py") if _packages_used(p)}
    assert not offenders, f"the core (stylecap/*.py) sits below the packages, but imports them: {offenders}"


@pytest.mark.parametrize("package, forbidden", [("eval", {"extract", "train"}), ("extract", {"train", "eval"}),
                                                ("train", {"extract"})])
def test_packages_point_one_way(package, forbidden):
    assert (ROOT / "stylecap" / package / "__init__.py").is_file()
    offenders = {str(p.relative_to(ROOT)): sorted(_packages_used(p) & forbidden)
                 for p in (ROOT / "stylecap" / package).rglob("*.py") if _packages_used(p) & forbidden}
    assert not offenders, f"stylecap.{package} must not import {sorted(forbidden)}: {offenders}"


def test_layering_check_sees_lazy_and_from_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from stylecap import extract\n    import stylecap.train.data\n", encoding="utf-8")
    assert _packages_used(probe) == {"extract", "train"}


def test_no_test_hooks_in_production_code():
    hooks = ("STYLECAP_TEST_SIGNAL", "STYLECAP_DIE_AFTER_CHUNKS")
    files = list(ROOT.glob("*.py")) + list((ROOT / "stylecap").rglob("*.py")) + list((ROOT / "models").rglob("*.py"))
    found = [(str(p.relative_to(ROOT)), h) for p in files for h in hooks if h in p.read_text(encoding="utf-8")]
    assert not found, f"test-only hooks in production code: {found}"
