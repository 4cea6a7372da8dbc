"""Patches: an edit as data that can be applied and reverted exactly, stored with safetensors.

A `WeightChange` keeps the *before and after* values of what an edit touched: a whole
tensor, or only some rows/columns (an index along one dimension). Reverting copies the
before values back, bit for bit; nothing is ever "subtracted back", since floating point
does not round-trip. An `Attachment` is a module an edit adds (side memory, codebook,
adapter) with its state; it is attached and detached, never merged silently.

On disk a patch is one .safetensors file: tensors named `w{i}.before|after|index` and
`a{i}.{key}`, and a JSON description in the safetensors metadata. No pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from workbench.core import offload
from workbench.core.errors import InputError
from workbench.core.registry import InvalidEntry, Registry

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor reinterpreted as integers of the same width: exact comparison, NaN-safe."""
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()]) if t.is_floating_point() else t


def _param(model, name: str) -> torch.Tensor:
    """The live, resident tensor `name`: an offloaded module is onloaded first (see offload.py),
    so what a patch writes is what the next forward pass reads."""
    try:
        return offload.tensor(model, name)
    except AttributeError:
        raise InputError(f"the model has no parameter or buffer {name!r}", field="weights") from None


@dataclass
class WeightChange:
    """Before/after values of one tensor, or of the slices `index` along `dim`.

    Example:
        >>> w = WeightChange("lm_head.weight", before, after, dim=0, index=torch.tensor([3]))  # doctest: +SKIP
    """
    name: str
    before: torch.Tensor
    after: torch.Tensor
    dim: int = 0
    index: torch.Tensor | None = None  # (k,) int64; None = the whole tensor

    def _write(self, model, values: torch.Tensor) -> None:
        target = _param(model, self.name)
        with torch.no_grad():
            if self.index is None:
                if target.shape != values.shape:
                    if not self.resizes:
                        raise InputError(f"shape {tuple(values.shape)} does not fit {self.name} "
                                         f"{tuple(target.shape)}", field="weights")
                    _replace(model, self.name, target, values)
                    return
                target.copy_(values.to(target.device, target.dtype))
            else:
                target.index_copy_(self.dim, self.index.to(target.device), values.to(target.device, target.dtype))

    def apply(self, model) -> None:
        self._write(model, self.after)

    def revert(self, model) -> None:
        self._write(model, self.before)

    def current(self, model) -> torch.Tensor:
        t = _param(model, self.name).detach()
        return t if self.index is None else t.index_select(self.dim, self.index.to(t.device))

    @property
    def resizes(self) -> bool:
        """Before and after differ in shape (a growing codebook): applied by replacing the tensor."""
        return self.index is None and self.before.shape != self.after.shape

    @property
    def nbytes(self) -> int:
        return (self.before.numel() + self.after.numel()) * self.before.element_size()


def _replace(model, name: str, old: torch.Tensor, values: torch.Tensor) -> None:
    """Swap in a tensor of another shape, keeping its kind (parameter or buffer)."""
    mod_name, _, attr = name.rpartition(".")
    module = model.get_submodule(mod_name) if mod_name else model
    new = values.detach().clone().to(old.device, old.dtype)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, attr, torch.nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module.register_buffer(attr, new, persistent=attr not in module._non_persistent_buffers_set)


class Attachment:
    """A module an edit adds to the model. Subclasses set `kind`, and implement
    `attach(model, adapter)`, `detach(model, adapter)`, `state()` (tensors) and `config()`
    (JSON), and `from_saved(config, state)`. Register with `register_attachment`.

    `inert = True` declares state an editor keeps for its later edits that changes no output
    (AlphaEdit's record of the keys it has already written): it is attached and reverted with
    its patch like any other, but a plain checkpoint export may leave it behind."""
    kind: ClassVar[str] = ""
    inert: ClassVar[bool] = False

    def attach(self, model, adapter) -> None:
        raise NotImplementedError

    def detach(self, model, adapter) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "Attachment":
        raise NotImplementedError

    def describe(self, model) -> dict | None:
        """What this attachment is in `model` now, for people (a UI table row), or None.
        A named adapter returns at least {"adapter": its name, "enabled": bool}."""
        return None


def _check_attachment(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Attachment)) or not cls.kind:
        raise InvalidEntry(f"{getattr(cls, '__name__', cls)!r} is not an Attachment subclass with a `kind`")


ATTACHMENT_KINDS: Registry[type[Attachment]] = Registry("attachment kind", key=lambda c: c.kind,
                                                         check=_check_attachment)


def register_attachment(cls: type[Attachment]) -> type[Attachment]:
    """Make an attachment kind loadable from patch files (only registered kinds load)."""
    return ATTACHMENT_KINDS.register(cls)


@dataclass
class Patch:
    """Everything needed to apply and revert one edit exactly."""
    weights: list[WeightChange] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def weights_only(self) -> bool:
        """Only weight changes reach the outputs (inert attachments aside): a plain checkpoint holds it."""
        return all(a.inert for a in self.attachments)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights) + sum(
            t.numel() * t.element_size() for a in self.attachments for t in a.state().values())

    def apply(self, model, adapter=None) -> None:
        for w in self.weights:
            w.apply(model)
        for a in self.attachments:
            a.attach(model, adapter)

    def revert(self, model, adapter=None) -> None:
        for a in reversed(self.attachments):
            a.detach(model, adapter)
        for w in reversed(self.weights):
            w.revert(model)

    def save(self, path: str | Path) -> str:
        """Write atomically (temporary name, fsync, rename); returns the file's sha256."""
        from safetensors.torch import save_file
        tensors: dict[str, torch.Tensor] = {}
        desc = {"weights": [], "attachments": [], "meta": self.meta}
        for i, w in enumerate(self.weights):
            tensors[f"w{i}.before"], tensors[f"w{i}.after"] = w.before.contiguous(), w.after.contiguous()
            if w.index is not None:
                tensors[f"w{i}.index"] = w.index.to(torch.int64).contiguous()
            desc["weights"].append({"name": w.name, "dim": w.dim, "indexed": w.index is not None})
        for i, a in enumerate(self.attachments):
            keys = sorted(a.state())
            for k in keys:
                tensors[f"a{i}.{k}"] = a.state()[k].contiguous()
            desc["attachments"].append({"kind": a.kind, "config": a.config(), "keys": keys})
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"workbench_patch": json.dumps(desc, sort_keys=True)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
            digest = hashlib.sha256(f.read()).hexdigest()
        os.replace(tmp, path)
        return digest

    @classmethod
    def load(cls, path: str | Path) -> "Patch":
        from safetensors import safe_open
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                desc = json.loads((f.metadata() or {})["workbench_patch"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, KeyError, ValueError, json.JSONDecodeError, Exception) as e:  # safetensors raises its own
            raise InputError(f"not a readable patch file: {e}", file=path) from None
        weights = [WeightChange(d["name"], tensors[f"w{i}.before"], tensors[f"w{i}.after"], d["dim"],
                                tensors.get(f"w{i}.index") if d["indexed"] else None)
                   for i, d in enumerate(desc["weights"])]
        attachments = []
        for i, d in enumerate(desc["attachments"]):
            kind = ATTACHMENT_KINDS.get(d["kind"])
            if kind is None:
                raise InputError(f"unknown attachment kind {d['kind']!r}; known: {sorted(ATTACHMENT_KINDS)}", file=path)
            attachments.append(kind.from_saved(d["config"], {k: tensors[f"a{i}.{k}"] for k in d["keys"]}))
        return cls(weights, attachments, desc.get("meta", {}))


class WeightRecorder:
    """Snapshot some parameters, let an editor change them, then describe the change.

    Example:
        >>> rec = WeightRecorder(model, ["model.layers.3.mlp.down_proj.weight"])  # doctest: +SKIP
        >>> ...  # edit the model in place
        >>> patch = rec.patch()  # doctest: +SKIP
    """

    def __init__(self, model, names: list[str]):
        self.model = model
        self.before = {n: _param(model, n).detach().clone() for n in dict.fromkeys(names)}

    def restore(self) -> None:
        with torch.no_grad():
            for n, t in self.before.items():
                _param(self.model, n).copy_(t)

    def patch(self, meta: dict | None = None) -> Patch:
        changes = []
        for name, before in self.before.items():
            after = _param(self.model, name).detach().clone()
            if after.shape != before.shape:
                changes.append(WeightChange(name, before, after))
                continue
            diff = _bits(before) != _bits(after)
            if not diff.any():
                continue
            changes.append(_smallest_change(name, before, after, diff))
        return Patch(changes, [], dict(meta or {}))


def _smallest_change(name, before, after, diff) -> WeightChange:
    # Keep only the slices that changed along the dimension where that is fewest (a neuron
    # column, a few rows); a dense change keeps the whole tensor.
    best = WeightChange(name, before, after)
    best_size = before.numel()
    for dim in range(before.dim()):
        other = tuple(d for d in range(before.dim()) if d != dim)
        touched = diff.any(dim=other) if other else diff  # (size along dim,)
        idx = touched.nonzero().flatten()
        size = idx.numel() * before.numel() // before.shape[dim]
        if size < best_size:
            best, best_size = WeightChange(name, before.index_select(dim, idx), after.index_select(dim, idx), dim, idx), size
    return best


def _tensor_digest(name: str, t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_bits(t).numpy().tobytes())
    return h.digest()


def weights_hash(model, cache: "HashCache | None" = None) -> str:
    """sha256 over every state_dict entry (name, dtype, shape, bytes) in sorted order.

    With a `HashCache`, a tensor is re-read only when its storage or version counter moved
    or it was invalidated, so hashing after a one-layer change costs one layer, not the
    model. Without one (as `verify` does) every byte is read.
    """
    if cache is not None:
        return cache.model_hash(model)
    h = hashlib.sha256()
    for name, t in offload.state_values(model):  # offloaded entries by their real values
        h.update(_tensor_digest(name, t))
    return h.hexdigest()


class HashCache:
    """Per-tensor digests keyed by (tensor object, storage pointer, in-place version counter).

    The tensor object is held by weak reference and compared by identity: a buffer replaced
    by a fresh tensor (GRACE's `register_buffer`) may be allocated at the freed one's address
    with version 0, so pointer and version alone would return the old digest.
    Writes through `.data` bypass the version counter, so whoever changes weights that way
    must `invalidate` the names (`workbench.editing.live.LiveModel` does so for every patch it
    applies or reverts).
    """

    def __init__(self):
        self._entries: dict[str, tuple[weakref.ref, int, int, bytes]] = {}
        self._items: list | None = None  # sorted state_dict items, kept while the modules stay

    def model_hash(self, model) -> str:
        if self._items is None:
            # keep_vars: the live Parameter/buffer objects, whose identity lasts between calls
            self._items = sorted(model.state_dict(keep_vars=True).items())
        h = hashlib.sha256()
        for i, (name, t) in enumerate(self._items):
            if t.is_meta:  # offloaded when last seen: onloaded since (by an edit) if no longer meta
                now = offload.live(model, name)
                if now is not None and not now.is_meta:
                    self._items[i] = (name, now)
                    t = now
            h.update(self.digest(name, t, model))
        return h.hexdigest()

    def digest(self, name: str, t: torch.Tensor, model=None) -> bytes:
        # A meta stand-in keeps its digest while its module stays offloaded: offloaded storage
        # is never written (offload.py), so its values cannot have moved.
        hit = self._entries.get(name)
        if hit is not None and hit[0]() is t and hit[1:3] == (t.data_ptr(), t._version):
            return hit[3]
        d = _tensor_digest(name, offload.read(model, name, t) if t.is_meta else t)
        self._entries[name] = (weakref.ref(t), t.data_ptr(), t._version, d)
        return d

    def invalidate(self, names, *, structure: bool = False) -> None:
        """Forget these tensors' digests; `structure`: modules were added, removed or replaced."""
        for n in names:
            self._entries.pop(n, None)
        if structure:
            self._items = None
