"""The editor contract: what an editor declares, what it is given, and what it returns.

An editor is a class with three class attributes and one method:

- `name`: the registry name ("ft", "wise", ...);
- `capabilities`: a `Capabilities` (what the session may ask of it; the session reads these
  flags and never checks editor names);
- `hparams_class`: a dataclass subclassing `HParams` (fields with `metadata={"help": ...}`,
  validation in `__post_init__`, `None` defaults derived from the model in `derive`);
- `edit(ctx, requests) -> Patch`: change `ctx.model` so that it satisfies `requests`, and
  return the change as a `workbench.core.patch.Patch` (use `ctx.recorder(...)` to capture the
  before/after of the weights it touches). The session owns everything else: validation,
  metrics, the ledger, gates, rollback. If `edit` raises, the session restores the model.

Example:
    >>> @register_editor                                    # doctest: +SKIP
    ... class Noop:
    ...     name = "noop"; capabilities = Capabilities(batch=True, sequential=True)
    ...     hparams_class = HParams
    ...     def __init__(self, hparams): self.hparams = hparams
    ...     def edit(self, ctx, requests): return Patch()
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

from workbench.core.errors import InputError


@dataclass(frozen=True)
class Capabilities:
    """What an editor can do; declared once, read by the session.

    batch: accepts several requests in one `edit` call (else exactly one).
    sequential: can be applied on top of earlier edits (lifelong editing).
    forget: takes `ForgetRequest`s (unlearning) instead of `EditRequest`s.
    single_revert: one of its edits can be reverted out of the middle of a history
        (its patch touches state that later edits do not depend on).
    composes: it works on what earlier edits left in the model (merging or switching
        recorded adapters) rather than on the requests, which it only lets the session measure.
    """
    batch: bool = False
    sequential: bool = True
    forget: bool = False
    single_revert: bool = False
    composes: bool = False


@dataclass
class HParams:
    """Base for hyperparameter dataclasses.

    Fields carry `metadata={"help": "..."}`; validation goes in `__post_init__` and raises
    `InputError(..., field=name)` naming the allowed range. A field whose default is `None`
    may be filled from the model in `derive` (e.g. the layer at ~80% depth).
    """

    def derive(self, adapter) -> "HParams":
        """Return a copy with model-dependent `None` fields filled in; default: unchanged."""
        return self

    @classmethod
    def from_strings(cls, values: dict[str, str | Any]) -> "HParams":
        """Build from CLI-style `k=v` values, converting each to its field's type.

        Example:
            >>> HParams.from_strings({})
            HParams()
        """
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, raw in values.items():
            if key not in known:
                raise InputError(f"unknown hyperparameter; known: {', '.join(sorted(known)) or 'none'}", field=key)
            kwargs[key] = _convert(raw, known[key], key)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        """[{name, type, default, help}] for the CLI and UI to build their options from."""
        out = []
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append({"name": f.name, "type": _type_name(f), "default": default, "help": f.metadata.get("help", "")})
        return out


def _type_name(f) -> str:
    t = f.type
    if not isinstance(t, str):
        # Real annotations (no `from __future__ import annotations`): a generic such as
        # tuple[int, ...] has __name__ "tuple", which would lose the element type.
        plain = typing.get_origin(t) is None and isinstance(t, type)
        t = t.__name__ if plain else str(t).replace("typing.", "")
    if t.startswith("Optional[") and t.endswith("]"):
        t = t[len("Optional["):-1]
    return t.replace(" | None", "").replace("None | ", "")


def _convert(raw, f, key):
    if not isinstance(raw, str):
        return raw
    t = _type_name(f)
    try:
        if raw.lower() in ("none", "null", "auto") and f.default is None:
            return None
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        if t.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if t.startswith(("tuple", "list")):
            inner = int if "int" in t else float if "float" in t else str
            return tuple(inner(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise InputError(f"cannot read {raw!r} as {t}", field=key) from None
    return raw


@runtime_checkable
class Editor(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    hparams_class: ClassVar[type[HParams]]

    def __init__(self, hparams: HParams) -> None: ...

    def edit(self, ctx: "EditContext", requests: list) -> Any:
        """Apply the change to `ctx.model` and return it as a `Patch`."""
        ...


@dataclass
class EditContext:
    """What an editor gets: the model, its tokenizer and architecture adapter, and a seed.

    `recorder(param_names)` snapshots those parameters so the editor can return
    `rec.patch()` with their exact before/after values.
    """
    model: Any
    tokenizer: Any
    adapter: Any
    seed: int = 0

    def recorder(self, param_names: list[str]):
        from workbench.core.patch import WeightRecorder
        return WeightRecorder(self.model, param_names)


@contextlib.contextmanager
def trainable_only(model, params=()):
    """Within: only `params` (Parameters of `model`) require grad. After: every parameter's
    `requires_grad` as it was, restored *by name*: accelerate's offload hooks (device_map)
    replace an offloaded module's Parameter objects at each forward pass, so flags kept by
    object would be put back on objects the model no longer holds.

    Example:
        >>> with trainable_only(model, [weight]):   # doctest: +SKIP
        ...     loss.backward()                      # only `weight` gets a .grad
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
