"""One registry pattern for every kind of named thing: editors, attachment kinds, architecture
specs, metric specs (lm-evaluation-harness's generic `Registry` is the model).

A `Registry` maps names to objects of one kind. Objects come in three ways, one lookup:

- `register(obj)` (also usable as a class decorator), checked by the registry's `check`;
- `register_lazy(name, "pkg.mod:attr")`: imported only when the name is asked for;
- an entry-point `group`, so another installed package can add entries; read on the first
  lookup, nothing imported until a name is asked for.

A different object under a taken name is refused (`replace=True` overrides); a miss is
answered with the closest names. It reads like a mapping (`reg[name]`, `name in reg`,
iteration over names, `reg.get(name)`), and `lookup(name)` also loads lazy and entry-point
entries.

Example:
    >>> colours = Registry("colour", key=lambda c: c["name"])
    >>> _ = colours.register({"name": "red"})
    >>> colours.lookup("rde")
    Traceback (most recent call last):
    ...
    workbench.core.registry.UnknownName: no colour named 'rde'; did you mean 'red'? known: red
"""
from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import MutableMapping
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

from workbench.core.errors import WorkbenchError

T = TypeVar("T")


class UnknownName(WorkbenchError, LookupError):
    """No entry by that name; the message suggests the closest names and lists all."""


class DuplicateName(WorkbenchError, ValueError):
    """A second, different object registered under a name already taken."""


class InvalidEntry(WorkbenchError, TypeError):
    """An object that does not meet the registry's contract."""


def _same_class(a: Any, b: Any) -> bool:
    # A module imported again (importlib.reload, a test re-running it) makes a new class
    # object with the same home; that is the same entry, not a clash.
    if a is b:
        return True
    return isinstance(a, type) and isinstance(b, type) and \
        (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


class Registry(MutableMapping, Generic[T]):
    """Names to objects of one `kind` ("editor", "attachment kind", ...).

    `key(obj)` gives an object's own name (checked against the name it is registered under);
    `check(obj)` raises `InvalidEntry` for an object that does not meet the contract;
    `group`: the entry-point group read for more entries.
    """

    def __init__(self, kind: str, *, key: Callable[[Any], str] | None = None,
                 check: Callable[[Any], None] | None = None, group: str | None = None):
        self.kind, self.group = kind, group
        self._key, self._check = key, check
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._entry_points: dict[str, Any] | None = None
        self._ep_conflicts: dict[str, set[str]] = {}
        # Guards the dicts only; never held across an import, since a module's own
        # registration runs inside that import (possibly on another thread's import lock).
        self._lock = threading.RLock()

    # -- registering -------------------------------------------------------------------
    def register(self, obj: T | None = None, *, name: str | None = None, replace: bool = False):
        """Register `obj` under `name` (default: `key(obj)`); returns it, so it also decorates.

        Example:
            >>> reg = Registry("shape")
            >>> @reg.register(name="square")
            ... class Square: ...
            >>> reg["square"] is Square
            True
        """
        def wrap(o):
            label = name if name is not None else self._name_of(o)
            if self._check is not None:
                self._check(o)
            if not isinstance(label, str) or not label:
                raise InvalidEntry(f"a {self.kind} needs a non-empty name, got {label!r}")
            with self._lock:
                old = self._items.get(label)
                if old is not None and not replace and not _same_class(old, o):
                    where = f"{old.__module__}.{old.__qualname__}" if isinstance(old, type) else repr(old)
                    raise DuplicateName(f"{self.kind} name {label!r} is already registered by {where}; "
                                        f"pick another name")
                self._items[label] = o
            return o
        return wrap if obj is None else wrap(obj)

    def register_lazy(self, name: str, target: str) -> None:
        """Register `name` as "pkg.mod:attr", imported on first `lookup(name)`."""
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"lazy {self.kind} target must look like 'pkg.mod:attr', got {target!r}")
        with self._lock:
            have = self._items.get(name)
            if (have is not None and f"{getattr(have, '__module__', '')}:{getattr(have, '__qualname__', '')}" != target) \
                    or self._lazy.get(name, target) != target:
                raise DuplicateName(f"{self.kind} name {name!r} is already registered")
            self._lazy[name] = target

    def refresh(self) -> None:
        """Forget the entry-point scan (after installing a package into a running process)."""
        with self._lock:
            self._entry_points = None
            self._ep_conflicts.clear()

    # -- finding -----------------------------------------------------------------------
    def lookup(self, name: str) -> T:
        """The entry called `name`, importing a lazy or entry-point target on first use."""
        with self._lock:
            if name in self._items:
                return self._items[name]
            lazy = self._lazy.get(name)
        if lazy is not None:
            return self._load(name, lazy, "lazy entry")
        eps = self._eps()
        if name in self._ep_conflicts:
            raise WorkbenchError(f"entry point {name!r} in group {self.group!r} is declared by several "
                                 f"packages with different targets: {', '.join(sorted(self._ep_conflicts[name]))}")
        if name in eps:
            return self._load(name, eps[name].value, f"{self.group} entry point")
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownName(f"no {self.kind} named {name!r}; {hint}known: {', '.join(known) or 'none'}")

    def names(self) -> list[str]:
        """Every name, registered, lazy or declared by an entry point, sorted; imports nothing."""
        eps = self._eps()
        with self._lock:
            return sorted(set(self._items) | set(self._lazy) | set(eps))

    def _name_of(self, obj) -> str:
        return self._key(obj) if self._key is not None else getattr(obj, "name", None)

    def _eps(self) -> dict[str, Any]:
        """The group's entry points, read once (metadata only; nothing imported)."""
        if self.group is None:
            return {}
        with self._lock:
            if self._entry_points is None:
                found: dict[str, Any] = {}
                for ep in entry_points(group=self.group):
                    if ep.name in found and found[ep.name].value != ep.value:
                        self._ep_conflicts.setdefault(ep.name, {found[ep.name].value}).add(ep.value)
                    found.setdefault(ep.name, ep)
                self._entry_points = found
            return self._entry_points

    def _load(self, name: str, target: str, origin: str) -> T:
        """Import `target` ("pkg.mod:attr"), check it and register it under `name`."""
        module, _, attr = target.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:  # any failure inside a third-party module: report, don't crash
            raise WorkbenchError(f"{self.kind} {name!r} ({origin} {target!r}) failed to load: "
                                 f"{type(e).__name__}: {e}") from e
        try:
            if self._check is not None:
                self._check(obj)
        except InvalidEntry as e:
            raise type(e)(f"{self.kind} {name!r} ({origin} {target!r}): {e}") from None
        own = self._name_of(obj)
        if own != name:
            raise InvalidEntry(f"{origin} {name!r} points at {target!r}, whose name is {own!r}")
        return self.register(obj)

    # -- the mapping view (registered entries only; `lookup` also loads) -----------------
    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __setitem__(self, name: str, obj: T) -> None:
        self.register(obj, name=name, replace=True)

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"
