"""The editor registry: names to editor classes, found by decorator, lazy entry or entry point.

Three ways in, one lookup:

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
import difflib
import importlib
import inspect
import threading
from importlib.metadata import entry_points
from typing import Any, Mapping

from workbench.core.errors import WorkbenchError
from workbench.editing.contract import Capabilities, Editor, HParams

GROUP = "workbench.editors"


class UnknownEditor(WorkbenchError, LookupError):
    """No editor by that name; the message suggests the closest names and lists all."""


class InvalidEditor(WorkbenchError, TypeError):
    """A class that does not meet the editor contract (missing or wrong attributes)."""


class DuplicateEditor(WorkbenchError, ValueError):
    """A second, different class registered under a name already taken."""


_classes: dict[str, type] = {}       # loaded and checked
_lazy: dict[str, str] = {}           # name -> "pkg.mod:Class", from register_lazy
_entry_points: dict[str, Any] | None = None  # name -> EntryPoint; None until first lookup
_ep_conflicts: dict[str, set[str]] = {}      # name -> distinct targets claimed for it
# Guards the dicts only; never held across an import, since an editor module's own
# @register_editor runs inside that import (possibly on another thread's import lock).
_lock = threading.RLock()


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
    if isinstance(cls, type) and issubclass(cls, Editor) and getattr(cls, "run", None) is Editor.run:
        problems.append("`run(ctx, batch, hp)` must be implemented")
    if problems:
        raise InvalidEditor(f"editor class {label} is not a valid editor: " + "; ".join(problems))


def _same_class(a: type, b: type) -> bool:
    # A module imported again (importlib.reload, a test re-running it) makes a new class
    # object with the same home; that is the same editor, not a clash.
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_editor(cls: type | None = None, *, name: str | None = None):
    """Class decorator: check `cls` against the editor contract and register it by name.

    `name=` sets the class's `name` when it has none (it must agree when it has one).
    A different class under a taken name raises `DuplicateEditor` (a ValueError).

    Example:
        >>> @register_editor                                          # doctest: +SKIP
        ... class Noop(Editor):
        ...     name = "noop"; capabilities = Capabilities(batch=True)
        ...     hparams_class = HParams
        ...     def run(self, ctx, batch, hp): return Patch()
    """
    def wrap(c: type) -> type:
        if name is not None:
            own = getattr(c, "name", None)
            if own is None:
                c.name = name
            elif own != name:
                raise InvalidEditor(f"{c.__qualname__} has name {own!r} but is registered as {name!r}")
        _check(c)
        with _lock:
            old = _classes.get(c.name)
            if old is not None and not _same_class(old, c):
                raise DuplicateEditor(f"editor name {c.name!r} is already registered by "
                                      f"{old.__module__}.{old.__qualname__}; pick another name")
            _classes[c.name] = c
        return c

    return wrap if cls is None else wrap(cls)


def register_lazy(name: str, target: str) -> None:
    """Register `name` as "pkg.mod:Class", imported on first `get_editor(name)`.

    Example:
        >>> register_lazy("myedit", "my_pkg.editors:MyEditor")        # doctest: +SKIP
    """
    module, sep, attr = target.partition(":")
    if not (module and sep and attr):
        raise ValueError(f"lazy editor target must look like 'pkg.mod:Class', got {target!r}")
    with _lock:
        have = _classes.get(name)
        if (have is not None and f"{have.__module__}:{have.__qualname__}" != target) \
                or _lazy.get(name, target) != target:
            raise DuplicateEditor(f"editor name {name!r} is already registered")
        _lazy[name] = target


def _eps() -> dict[str, Any]:
    """The `workbench.editors` entry points, read once (metadata only; nothing imported)."""
    global _entry_points
    with _lock:
        if _entry_points is None:
            found: dict[str, Any] = {}
            for ep in entry_points(group=GROUP):
                if ep.name in found and found[ep.name].value != ep.value:
                    _ep_conflicts.setdefault(ep.name, {found[ep.name].value}).add(ep.value)
                found.setdefault(ep.name, ep)
            _entry_points = found
        return _entry_points


def _refresh_entry_points() -> None:
    """Forget the entry-point scan (after installing a package into a running process)."""
    global _entry_points
    with _lock:
        _entry_points = None
        _ep_conflicts.clear()


def _load(name: str, target: str, origin: str) -> type:
    """Import `target` ("pkg.mod:Class"), check it and register it under `name`."""
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # any failure inside a third-party module: report, don't crash
        raise WorkbenchError(f"editor {name!r} ({origin} {target!r}) failed to load: "
                             f"{type(e).__name__}: {e}") from e
    try:
        _check(obj)
    except InvalidEditor as e:
        raise InvalidEditor(f"editor {name!r} ({origin} {target!r}): {e}") from None
    if obj.name != name:
        raise InvalidEditor(f"{origin} {name!r} points at {target!r}, whose name is {obj.name!r}")
    return register_editor(obj)


def get_editor(name: str) -> type:
    """The editor class registered as `name`, importing it on first use.

    Example:
        >>> get_editor("fx")                                          # doctest: +SKIP
        UnknownEditor: no editor named 'fx'; did you mean 'ft'? known: ft, wise
    """
    with _lock:
        if name in _classes:
            return _classes[name]
        lazy = _lazy.get(name)
    if lazy is not None:
        return _load(name, lazy, "lazy entry")
    eps = _eps()
    if name in _ep_conflicts:
        raise WorkbenchError(f"entry point {name!r} in group {GROUP!r} is declared by several "
                             f"packages with different targets: {', '.join(sorted(_ep_conflicts[name]))}")
    if name in eps:
        return _load(name, eps[name].value, f"{GROUP} entry point")
    known = editor_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownEditor(f"no editor named {name!r}; {hint}known: {', '.join(known) or 'none'}")


def editor_names() -> list[str]:
    """All registered names, sorted; reads entry-point metadata but imports no editor.

    Example:
        >>> editor_names()                                            # doctest: +SKIP
        ['ft', 'wise']
    """
    eps = _eps()
    with _lock:
        return sorted(set(_classes) | set(_lazy) | set(eps))


def describe_editor(name: str) -> dict:
    """{name, capabilities, hyperparameters, doc (the docstring's summary)} for CLI and UI.

    Example:
        >>> describe_editor("ft")["capabilities"]                     # doctest: +SKIP
        {'batch': True, 'sequential': True, 'forget': False, 'single_revert': False}
    """
    cls = get_editor(name)
    # The summary is the docstring's first paragraph, so a wrapped first sentence stays whole.
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
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
