"""The editor registry: names to editor classes, found by decorator, lazy entry or entry point.

Three ways in, one lookup (a `workbench.core.registry.Registry` of kind "editor"):

- `@register_editor` on a class (the editor module registers itself when imported);
- `register_lazy("name", "pkg.mod:Class")`: imported only when the name is asked for;
- the `workbench.editors` entry-point group, so another installed package can add an editor
  (the built-in ones are listed there too, in pyproject.toml: the core never names them).

Nothing is imported or constructed at import time of this module: entry points are read on
the first lookup, and only the requested editor's module is imported. Every class is checked
against the contract in `workbench.editing.contract` before it is handed out.

Example:
    >>> cls = get_editor("ft")                                        # doctest: +SKIP
    >>> editor, hp = make_editor("ft", adapter, {"lr": "0.5"})        # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Mapping

from workbench.core.registry import DuplicateName, InvalidEntry, Registry, UnknownName
from workbench.editing.contract import Capabilities, Editor, HParams

GROUP = "workbench.editors"

# The editor-specific names of the registry's errors (a miss is also a LookupError, a clash a ValueError).
UnknownEditor, InvalidEditor, DuplicateEditor = UnknownName, InvalidEntry, DuplicateName


def _check(cls: Any) -> None:
    """Raise InvalidEditor unless `cls` meets the editor contract of `workbench.editing.contract`."""
    label = getattr(cls, "__qualname__", repr(cls))
    if not isinstance(cls, type):
        raise InvalidEditor(f"{label}: an editor must be a class, got {type(cls).__name__}")
    problems = []
    if not issubclass(cls, Editor):
        problems.append("it must subclass workbench.editing.contract.Editor")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("`name` must be a non-empty str")
    if not isinstance(getattr(cls, "capabilities", None), Capabilities):
        problems.append("`capabilities` must be a workbench.editing.contract.Capabilities instance")
    hp = getattr(cls, "hparams_class", None)
    if not (isinstance(hp, type) and issubclass(hp, HParams) and dataclasses.is_dataclass(hp)):
        problems.append("`hparams_class` must be a dataclass subclassing workbench.editing.contract.HParams")
    if issubclass(cls, Editor) and getattr(cls, "run", None) is Editor.run:
        problems.append("`run(ctx, batch, hp)` must be implemented")
    if problems:
        raise InvalidEditor(f"editor class {label} is not a valid editor: " + "; ".join(problems))


EDITORS: Registry[type[Editor]] = Registry("editor", check=_check, group=GROUP)


def register_editor(cls: type | None = None, *, name: str | None = None):
    """Class decorator: check `cls` against the editor contract and register it by name.

    `name=` sets the class's `name` when it has none (it must agree when it has one).
    A different class under a taken name raises `DuplicateEditor` (a ValueError).

    Example (a whole editor: `workbench.editing.contract`'s module docstring):
        >>> register_editor(MyEditor) is MyEditor                     # doctest: +SKIP
        True
    """
    def wrap(c: type) -> type:
        if name is not None:
            own = getattr(c, "name", None)
            if own is None:
                c.name = name
            elif own != name:
                raise InvalidEditor(f"{c.__qualname__} has name {own!r} but is registered as {name!r}")
        return EDITORS.register(c)

    return wrap if cls is None else wrap(cls)


def register_lazy(name: str, target: str) -> None:
    """Register `name` as "pkg.mod:Class", imported on first `get_editor(name)`.

    Example:
        >>> register_lazy("myedit", "my_pkg.editors:MyEditor")        # doctest: +SKIP
    """
    EDITORS.register_lazy(name, target)


def _refresh_entry_points() -> None:
    """Forget the entry-point scan (after installing a package into a running process)."""
    EDITORS.refresh()


def get_editor(name: str) -> type:
    """The editor class registered as `name`, importing it on first use.

    Example:
        >>> get_editor("fx")                                          # doctest: +SKIP
        UnknownEditor: no editor named 'fx'; did you mean 'ft'? known: ft, wise
    """
    return EDITORS.lookup(name)


def editor_names() -> list[str]:
    """All registered names, sorted; reads entry-point metadata but imports no editor.

    Example:
        >>> editor_names()                                            # doctest: +SKIP
        ['ft', 'wise']
    """
    return EDITORS.names()


def describe_editor(name: str) -> dict:
    """{name, capabilities, hyperparameters, doc (the docstring's summary)} for CLI and UI.

    Example:
        >>> describe_editor("ft")["capabilities"]                     # doctest: +SKIP
        {'batch': True, 'sequential': True, 'forget': False, 'single_revert': False}
    """
    cls = get_editor(name)
    # The summary is the docstring's first paragraph, so a wrapped first sentence stays whole.
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    # a pointer for code readers ("See the module docstring.") tells a UI or CLI user nothing
    summary = re.sub(r"\s*See the module docstring[^.]*\.", "", summary)
    return {
        "name": cls.name,
        "capabilities": dataclasses.asdict(cls.capabilities),
        "hyperparameters": cls.hparams_class.describe(),
        "doc": " ".join(summary.split()),
    }


def make_editor(name: str, adapter: Any = None, params: Mapping[str, Any] | None = None):
    """Build `(editor, hparams)`: parse `params` ("k" -> "v" strings or values), fill
    model-derived defaults from `adapter`, construct the editor.

    Bad names or values raise `InputError` naming the field.

    Example:
        >>> editor, hp = make_editor("ft", adapter, {"layers": "1,2"})  # doctest: +SKIP
    """
    cls = get_editor(name)
    hp = cls.prepare(adapter, params)
    return cls(hp), hp
