"""Safe loading: nothing in the project can unpickle, and remote code runs only on request.

A source scan (so a future `torch.load` or `pickle` import fails here, not in an audit) plus
checks of the loaders' defaults.
"""
from __future__ import annotations

import ast
import inspect

from .conftest import REPO

PACKAGES = ("workbench", "editors", "ui", "bench")
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _sources():
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg).rglob("*.py"))


def _calls(tree, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


def test_no_module_imports_an_unpickler():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in UNSAFE_MODULES]
    assert not found, found
    assert sum(1 for _ in _sources()) > 40  # the scan really reads the project


def test_every_torch_load_is_weights_only_and_no_np_load_allows_pickle():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, "load"):
            owner = call.func.value.id if isinstance(call.func.value, ast.Name) else ""
            kw = {k.arg: k.value for k in call.keywords}
            if owner == "torch" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                         and kw["weights_only"].value is True):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} torch.load without weights_only=True")
            if owner in ("np", "numpy") and isinstance(kw.get("allow_pickle"), ast.Constant) \
                    and kw["allow_pickle"].value is True:
                bad.append(f"{path.relative_to(REPO)}:{call.lineno} np.load(allow_pickle=True)")
    assert not bad, bad


def test_remote_code_only_when_asked():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and \
                    isinstance(node.value, ast.Constant) and node.value.value is True:
                bad.append(f"{path.relative_to(REPO)}:{node.value.lineno}")
    assert not bad, f"trust_remote_code=True hard-coded at {bad}"
    from workbench.core.model import load_model
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_patch_and_cache_files_are_safetensors(tmp_path, monkeypatch):
    import torch

    from workbench.core.cache import cached_tensors
    from workbench.core.patch import Patch, WeightChange
    p = Patch([WeightChange("w", torch.zeros(2), torch.ones(2))], [], {"why": "test"})
    p.save(tmp_path / "p.safetensors")
    from safetensors import safe_open
    with safe_open(tmp_path / "p.safetensors", "pt") as f:  # opens only a safetensors file
        assert set(f.keys())
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    cached_tensors("t", "k", lambda: {"x": torch.ones(3)})
    files = list((tmp_path / "cache").rglob("*"))
    assert files and all(f.suffix in (".safetensors", ".json", "") for f in files if f.is_file())

