"""The editor registry: decorator and lazy registration, the entry-point group, errors for people.

Annotations here are real objects (no `from __future__ import annotations`) on purpose, so
`HParams.from_strings` is exercised on `tuple[int, ...]` objects as well as on strings.
"""
import dataclasses
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from workbench.editing import registry
from workbench.editing.contract import Capabilities, Editor, HParams
from workbench.core.errors import InputError, WorkbenchError
from workbench.editing.registry import (DuplicateEditor, InvalidEditor, UnknownEditor, describe_editor,
                                editor_names, get_editor, make_editor, register_editor,
                                register_lazy)


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test starts from the real entry points only and leaves no names behind."""
    for attr, fresh in (("_items", {}), ("_lazy", {}), ("_ep_conflicts", {}), ("_entry_points", None)):
        monkeypatch.setattr(registry.EDITORS, attr, fresh)


def _editor(name, /, **overrides):
    """A minimal valid editor class; `overrides` replace or (with None) drop attributes."""
    attrs = {"name": name, "capabilities": Capabilities(batch=True), "hparams_class": HParams,
             "run": lambda self, ctx, batch, hp: None}
    attrs.update(overrides)
    bases = attrs.pop("__bases__", (Editor,))
    return type(f"Editor_{name}", bases, {k: v for k, v in attrs.items() if v is not None})


# -- decorator registration -----------------------------------------------------------------

def test_decorator_registers_and_rejects_a_duplicate_name():
    first = register_editor(_editor("t_dup"))
    assert get_editor("t_dup") is first
    assert "t_dup" in editor_names()
    assert register_editor(first) is first  # the same class again is fine
    reloaded = _editor("t_dup")  # a new class object from the same module and qualname
    assert reloaded is not first and register_editor(reloaded) is reloaded
    assert get_editor("t_dup") is reloaded  # a re-import replaces the stale class

    with pytest.raises(DuplicateEditor, match=r"'t_dup' is already registered by .*Editor_t_dup"):
        register_editor(_editor("t_dup", __qualname__="Other"))
    assert issubclass(DuplicateEditor, ValueError)
    assert get_editor("t_dup") is reloaded  # the registration in place survives


def test_decorator_with_name_argument():
    @register_editor(name="t_named")
    class Named(Editor):
        capabilities = Capabilities()
        hparams_class = HParams

        def run(self, ctx, batch, hp):
            return None

    assert Named.name == "t_named" and get_editor("t_named") is Named
    with pytest.raises(InvalidEditor, match="'t_other' but is registered as 't_x'"):
        register_editor(name="t_x")(_editor("t_other"))


class NotADataclassHParams(HParams):  # subclass, but its own fields are not a dataclass
    def __init__(self, x=1):
        self.x = x


@pytest.mark.parametrize("overrides, complaint", [
    ({"name": None}, "`name`"),
    ({"name": ""}, "`name`"),
    ({"capabilities": None}, "`capabilities`"),
    ({"capabilities": {"batch": True}}, "`capabilities`"),
    ({"hparams_class": None}, "`hparams_class`"),
    ({"hparams_class": dict}, "`hparams_class`"),
    ({"hparams_class": dataclass(type("Loose", (), {}))}, "`hparams_class`"),
    ({"run": None}, "`run"),
    ({"__bases__": ()}, "must subclass workbench.editing.contract.Editor"),
])
def test_missing_or_wrong_attributes_are_rejected(overrides, complaint):
    cls = _editor("t_bad", **overrides)
    with pytest.raises(InvalidEditor, match=complaint):
        register_editor(cls)
    assert "t_bad" not in editor_names()


def test_non_class_rejected():
    with pytest.raises(InvalidEditor, match="must be a class"):
        register_editor(lambda: None)


# -- misses -----------------------------------------------------------------------------------

def test_a_miss_suggests_the_closest_names_and_lists_all():
    for n in ("wise", "grace", "memit"):
        register_editor(_editor(n))
    with pytest.raises(UnknownEditor) as err:
        get_editor("wsie")
    msg = str(err.value)
    assert "no editor named 'wsie'" in msg and "did you mean 'wise'?" in msg
    assert "known: " in msg and "grace" in msg and "memit" in msg
    assert isinstance(err.value, WorkbenchError)

    with pytest.raises(UnknownEditor) as err:
        get_editor("zzzzzz")
    assert "did you mean" not in str(err.value) and "grace" in str(err.value)


# -- lazy entries and entry points -------------------------------------------------------------

TP_MODULE = '''
from workbench.editing.contract import Capabilities, Editor, HParams

class TPEditor(Editor):
    """A third-party
    editor.

    More text that describe_editor leaves out.
    """
    name = "thirdparty"
    capabilities = Capabilities(batch=True, forget=True)
    hparams_class = HParams

    def run(self, ctx, batch, hp):
        return None
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A package 'installed' the way pip does it: a dist-info on sys.path, plus its module."""
    (tmp_path / "tp_editor_mod.py").write_text(TP_MODULE)
    (tmp_path / "tp_boom_mod.py").write_text("raise RuntimeError('boom at import')\n")
    info = tmp_path / "tp_editor-1.0.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: tp-editor\nVersion: 1.0\n")
    info.joinpath("entry_points.txt").write_text(textwrap.dedent("""\
        [workbench.editors]
        thirdparty = tp_editor_mod:TPEditor
        missing = tp_missing_mod:Nope
        noattr = tp_editor_mod:Nope
        boom = tp_boom_mod:Boom
        misnamed = tp_editor_mod:TPEditor
        """))
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    yield tmp_path
    for mod in ("tp_editor_mod", "tp_boom_mod"):
        sys.modules.pop(mod, None)


def test_third_party_entry_point_is_found_and_loaded_lazily(third_party):
    assert "tp_editor_mod" not in sys.modules
    names = editor_names()
    assert {"thirdparty", "boom", "missing"} <= set(names) and names == sorted(names)
    assert "tp_editor_mod" not in sys.modules  # listing names imports nothing

    cls = get_editor("thirdparty")
    assert cls.__name__ == "TPEditor" and cls.__module__ == "tp_editor_mod"
    assert "tp_editor_mod" in sys.modules
    assert get_editor("thirdparty") is cls  # cached
    info = describe_editor("thirdparty")
    assert info["name"] == "thirdparty" and info["doc"] == "A third-party editor."
    assert info["capabilities"] == {"batch": True, "sequential": True, "forget": True,
                                    "single_revert": False, "composes": False}
    assert info["hyperparameters"] == []


def test_builtin_editors_come_from_the_entry_point_group():
    # pyproject.toml declares ft; listing it must not need (or import) its module.
    assert "ft" in editor_names()


def test_importing_the_registry_imports_no_editor():
    code = ("import sys, workbench.editing.registry as r; r.editor_names(); "
            "bad = [m for m in sys.modules if m == 'editors' or m.startswith('editors.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("name, expected", [
    ("missing", r"workbench\.editors entry point 'tp_missing_mod:Nope'.*ModuleNotFoundError"),
    ("noattr", r"workbench\.editors entry point 'tp_editor_mod:Nope'.*AttributeError"),
    ("boom", r"workbench\.editors entry point 'tp_boom_mod:Boom'.*RuntimeError: boom at import"),
])
def test_broken_entry_point_gives_a_clear_error(third_party, name, expected):
    with pytest.raises(WorkbenchError, match=rf"editor '{name}' \({expected}"):
        get_editor(name)


def test_entry_point_name_must_match_the_class_name(third_party):
    with pytest.raises(InvalidEditor, match="'misnamed' points at .* whose name is 'thirdparty'"):
        get_editor("misnamed")


def test_conflicting_entry_points_are_reported(tmp_path, monkeypatch):
    for dist, target in (("pkg_a", "mod_a:Ed"), ("pkg_b", "mod_b:Ed")):
        info = tmp_path / dist / f"{dist}-1.0.dist-info"
        info.mkdir(parents=True)
        info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        info.joinpath("entry_points.txt").write_text(f"[workbench.editors]\nclash = {target}\n")
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    assert "clash" in editor_names()
    with pytest.raises(WorkbenchError, match="'clash'.*several packages.*mod_a:Ed, mod_b:Ed"):
        get_editor("clash")


def test_register_lazy_imports_on_first_lookup(third_party):
    register_lazy("thirdparty", "tp_editor_mod:TPEditor")
    register_lazy("thirdparty", "tp_editor_mod:TPEditor")  # same target again: fine
    with pytest.raises(DuplicateEditor):
        register_lazy("thirdparty", "elsewhere:Other")
    with pytest.raises(ValueError, match="pkg.mod:attr"):
        register_lazy("t_badtarget", "no_colon_here")
    assert "tp_editor_mod" not in sys.modules
    assert get_editor("thirdparty").__module__ == "tp_editor_mod"


# -- hyperparameters and construction ---------------------------------------------------------

@dataclass
class TinyHParams(HParams):
    lr: float = field(default=0.1, metadata={"help": "step size, in (0, 1]"})
    layers: tuple[int, ...] = field(default=(0,), metadata={"help": "layers to touch"})
    layer: int | None = field(default=None, metadata={"help": "main layer; default from depth"})

    def __post_init__(self):
        if not 0 < self.lr <= 1:
            raise InputError(f"must be in (0, 1], got {self.lr}", field="lr")

    def derive(self, adapter):
        if self.layer is None:
            return dataclasses.replace(self, layer=adapter.default_layer())
        return self


class TinyEditor(Editor):  # registered by the `tiny` fixture, so no name outlives a test
    """Tiny test editor.

    Not shown.
    """
    name = "tiny"
    capabilities = Capabilities(sequential=True, single_revert=True)
    hparams_class = TinyHParams

    def run(self, ctx, batch, hp):
        return None


@pytest.fixture
def tiny():
    return register_editor(TinyEditor)


ADAPTER = SimpleNamespace(default_layer=lambda: 3)


def test_make_editor_converts_strings_and_derives_defaults(tiny):
    editor, hp = make_editor("tiny", ADAPTER, {"lr": "0.5", "layers": "1,2"})
    assert isinstance(editor, TinyEditor) and editor.hparams is hp
    assert hp == TinyHParams(lr=0.5, layers=(1, 2), layer=3)
    assert isinstance(hp.lr, float) and all(isinstance(x, int) for x in hp.layers)

    _, hp = make_editor("tiny", None, {"layer": "5"})  # an explicit value beats derive
    assert hp.layer == 5 and hp.lr == 0.1
    _, hp = make_editor("tiny")  # no adapter: model-dependent defaults stay unset
    assert hp.layer is None


@pytest.mark.parametrize("params, field_name, text", [
    ({"lr": "2"}, "lr", r"\(0, 1\]"),
    ({"lr": "fast"}, "lr", "cannot read 'fast' as float"),
    ({"layers": "1,x"}, "layers", "cannot read"),
    ({"lrr": "0.5"}, "lrr", "unknown hyperparameter; known: layer, layers, lr"),
])
def test_make_editor_rejects_bad_values_naming_the_field(tiny, params, field_name, text):
    with pytest.raises(InputError, match=text) as err:
        make_editor("tiny", ADAPTER, params)
    assert err.value.field == field_name and f'field "{field_name}"' in str(err.value)


def test_make_editor_reports_a_plain_validation_error_as_input(monkeypatch, tiny):
    def strict(self):
        raise ValueError("layers must be sorted")
    monkeypatch.setattr(TinyHParams, "__post_init__", strict)
    with pytest.raises(InputError, match="editor 'tiny': layers must be sorted"):
        make_editor("tiny", None, {})


def test_describe_editor(tiny):
    info = describe_editor("tiny")
    assert info["name"] == "tiny" and info["doc"] == "Tiny test editor."
    assert info["capabilities"]["single_revert"] is True and info["capabilities"]["batch"] is False
    hps = {h["name"]: h for h in info["hyperparameters"]}
    assert list(hps) == ["lr", "layers", "layer"]
    assert hps["lr"]["default"] == 0.1 and hps["lr"]["help"] == "step size, in (0, 1]"
    assert hps["layers"]["type"] == "tuple[int, ...]" and hps["layer"]["type"] == "int"


def test_every_choice_hyperparameter_declares_its_choices():
    # the UI draws a select box from `choices`; a field validated as a choice without declaring
    # them would be a free-text box that accepts typos until the edit runs
    from workbench.core.errors import InputError
    from workbench.editing.registry import describe_editor, editor_names, get_editor
    undeclared = []
    for name in editor_names():
        cls = get_editor(name)
        for h in describe_editor(name)["hyperparameters"]:
            if h["type"] != "str" or h["choices"]:
                continue
            try:
                cls.hparams_class.from_strings({h["name"]: "not-a-choice-zz"})
            except InputError as e:
                if "must be one of" in str(e):
                    undeclared.append(f"{name}.{h['name']}")
    assert undeclared == []
    for name in editor_names():  # and every declared default is one of its choices
        for h in describe_editor(name)["hyperparameters"]:
            if h["choices"] and h["default"] is not None:
                assert h["default"] in h["choices"], (name, h["name"])
