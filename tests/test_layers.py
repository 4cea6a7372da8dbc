"""The package's layers, checked from the source: no module of `workbench/` imports an editor
or the UI, and no import runs back up a layer (function-level imports included)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer of workbench/ may import from workbench/ (itself included).
ALLOWED = {
    "core": {"core"},
    "eval": {"core", "eval"},
    "editing": {"core", "eval", "editing"},
    "world": {"core", "eval", "world"},
    "bench": {"core", "eval", "editing", "world", "bench"},
    "cli": {"core", "eval", "editing", "world", "bench", "cli"},
}


def _imports(path: Path):
    """(line, module) of every import in the file; relative ones resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield node.lineno, base
            if node.module is None or base in ("workbench",):  # `from workbench import core` names modules
                yield from ((node.lineno, f"{base}.{a.name}") for a in node.names)


MODULES = sorted((ROOT / "workbench").rglob("*.py"))


def test_every_module_is_in_a_layer():
    top = {p.relative_to(ROOT / "workbench").parts[0] for p in MODULES if p.parent != ROOT / "workbench"}
    assert top == set(ALLOWED)
    assert [p.name for p in MODULES if p.parent == ROOT / "workbench"] == ["__init__.py"]


@pytest.mark.parametrize("path", [p for p in MODULES if p.parent != ROOT / "workbench"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_up_a_layer_or_out_to_editors_or_ui(path):
    layer = path.relative_to(ROOT / "workbench").parts[0]
    bad = []
    for line, mod in _imports(path):
        head = mod.split(".")[0]
        if head in ("editors", "ui"):
            bad.append(f"line {line}: {mod}")
        elif head == "workbench" and "." in mod:
            target = mod.split(".")[1]
            if target in ALLOWED and target not in ALLOWED[layer]:
                bad.append(f"line {line}: {mod} ({layer} may import {sorted(ALLOWED[layer])})")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    # The parser must find function-level and relative imports, or the test above proves nothing.
    fake = ROOT / "workbench" / "core" / "_probe_for_test.py"
    src = "def f():\n    from editors.ft import FTEditor\n    from ..editing import session\n"
    found = list(_imports_from(src, fake))
    assert (2, "editors.ft") in found and (3, "workbench.editing") in found


def _imports_from(src: str, path: Path):
    tmp = path.with_name(path.name)
    import unittest.mock
    with unittest.mock.patch.object(Path, "read_text", lambda self: src):
        yield from _imports(tmp)
