"""GRACE's codebook: discrete key -> value entries that replace one layer's output.

The codebook is a `GraceCodebook` module registered as a child named `grace` of the wrapped
module (the MLP output projection of one block), plus a forward hook on that module. Each
entry is a `GraceEntry` submodule holding four buffers (key, value, radius, label), so the
codebook is part of `model.state_dict()`: `weights_hash` sees every key, and removing the
last entry gives back the original state dict bit for bit. The original projection stays
where it was (`...down_proj.weight` keeps its name), so other editors' patches still apply.

Routing (`route`) is per example and per position: each position's input activation is its
own query; if the nearest key lies within that key's radius (Euclidean), the projection's
output at that position is *replaced* by the key's value. A batched forward therefore routes
every row as it would alone (distances come from a matrix product, so only a query within
float rounding of a radius could flip), and KV-cache generation routes each new token.

Every edit is one `GraceEdit` attachment: it may create an entry (its `uid` becomes the
entry's name) and/or change one existing entry (split shrinks its radius, expand grows it and
retrains its value), keeping that entry's exact before/after state. Detaching undoes exactly
that, and is refused while a later edit outside the same patch changed what it touched, so a
GRACE key reverts alone out of the middle of a history whenever nothing depends on it.

Example:
    >>> att = GraceEdit(layer=2, uid="e0", replacement="replace_last", new=entry_state)  # doctest: +SKIP
    >>> att.attach(model, adapter); att.detach(model, adapter)                          # doctest: +SKIP
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.core.errors import InputError
from workbench.core.offload import execution_device
from workbench.core.patch import Attachment, _bits, register_attachment

CHILD = "grace"            # attribute name of the codebook on the wrapped module
FIELDS = ("key", "value", "radius", "label")
REPLACEMENTS = ("replace_last", "replace_all")
_CHUNK = 1 << 22           # positions x keys per distance block: bounds memory at ~16 MB


class GraceEntry(nn.Module):
    """One codebook entry: key (d_in,), value (d_out,), radius (), label (t,) int64."""

    def __init__(self, key, value, radius, label):
        super().__init__()
        for name, t in zip(FIELDS, (key, value, radius, label)):
            self.register_buffer(name, t.detach().clone())
        self.mods: list[str] = []  # uids of later edits that changed this entry, oldest first

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f).detach().clone() for f in FIELDS}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        # Replace, not copy_: a label may change length, and a fresh tensor keeps bits exact.
        for f in FIELDS:
            self.register_buffer(f, state[f].detach().clone().to(getattr(self, f).device))

    def equals(self, state: dict[str, torch.Tensor]) -> bool:
        return all(getattr(self, f).shape == state[f].shape and
                   torch.equal(_bits(getattr(self, f).cpu()), _bits(state[f].cpu())) for f in FIELDS)


def _uid_order(name: str) -> int:
    return int(name[1:]) if name[1:].isdigit() else -1


class GraceCodebook(nn.Module):
    """The entries of one layer and the hook that routes its output through them."""

    def __init__(self, replacement: str):
        super().__init__()
        self.replacement = replacement
        self.entries = nn.ModuleDict()
        self.train_override: tuple[str, torch.Tensor] | None = None  # (entry, trainable value)
        self._handles: list = []
        self._lead: torch.Size | None = None  # (batch, seq) of the current forward on flat-token models

    # -- membership ----------------------------------------------------------------------
    def names(self) -> list[str]:
        """Entry names in creation order (the canonical order: ties go to the older key)."""
        return sorted(self.entries.keys(), key=_uid_order)

    def stacked(self):
        """keys (n, d_in), values (n, d_out), radii (n,), names, in creation order."""
        names = self.names()
        ents = [self.entries[n] for n in names]
        keys = torch.stack([e.key for e in ents])
        values = torch.stack([e.value for e in ents])
        if self.train_override is not None and self.train_override[0] in names:
            # Out of place, so the gradient reaches the trainable value.
            i = names.index(self.train_override[0])
            values = values.index_copy(0, torch.tensor([i], device=values.device),
                                       self.train_override[1][None].to(values.dtype))
        return keys, values, torch.stack([e.radius for e in ents]), names

    # -- hooks ---------------------------------------------------------------------------
    def install(self, module: nn.Module, block: nn.Module | None) -> None:
        self._handles.append(module.register_forward_hook(self._route_hook))
        if block is not None:  # OPT flattens tokens to (batch*seq, d) before its MLP
            self._handles.append(block.register_forward_pre_hook(self._block_pre, with_kwargs=True))

    def uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _block_pre(self, _mod, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        self._lead = x.shape[:-1]

    def _route_hook(self, _module, args, out):
        if not len(self.entries):
            return None
        x = args[0]                                   # (batch, seq, d_in) or (batch*seq, d_in)
        keys, values, radii, _ = self.stacked()
        lead = self._lead if x.dim() == 2 and self._lead is not None else x.shape[:-1]
        hit, idx = route(x.reshape(*lead, x.shape[-1]), keys, radii, self.replacement)  # (b, s) each
        new = values[idx.reshape(-1)].to(out.dtype)   # (b*s, d_out)
        flat = out.reshape(-1, out.shape[-1])         # (b*s, d_out)
        return torch.where(hit.reshape(-1, 1), new, flat).reshape(out.shape)


def distances(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, n) Euclidean distances of rows x (N, d) to keys (n, d), in float32.

    Uses |x|^2 - 2 x.k + |k|^2 in blocks of rows (the same as torch.cdist's matrix-product
    mode) so evaluating thousands of positions against a thousand keys stays fast.
    """
    x, keys = x.float(), keys.float()
    k2 = (keys * keys).sum(-1)                                  # (n,)
    out = []
    step = max(1, _CHUNK // max(1, keys.shape[0]))
    for s in range(0, x.shape[0], step):
        xs = x[s:s + step]                                      # (c, d)
        d2 = (xs * xs).sum(-1, keepdim=True) - 2 * xs @ keys.T + k2  # (c, n)
        out.append(d2.clamp_min(0).sqrt())
    return torch.cat(out) if out else x.new_zeros(0, keys.shape[0])


def route(x: torch.Tensor, keys: torch.Tensor, radii: torch.Tensor, replacement: str):
    """Which positions are replaced, and by which entry.

    x (b, s, d_in); keys (n, d_in); radii (n,). Returns hit (b, s) bool and idx (b, s) long.
    "replace_last": a position is replaced iff its own nearest key is within that key's
    radius (EasyEdit's rule for the query token; applied to every position, it is what
    EasyEdit does for the last prompt token and then each generated token).
    "replace_all": once a position hits, it and every later position of that row take the
    value of the most recent hit (a causal version of EasyEdit's whole-sequence replace).

    Example:
        >>> hit, idx = route(torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.ones(1), "replace_last")
        >>> hit.tolist(), idx.tolist()
        ([[True, True]], [[0, 0]])
    """
    b, s, d = x.shape
    dist, idx = distances(x.reshape(-1, d), keys).min(1)  # (b*s,) nearest key, ties -> older
    hit = (dist <= radii[idx].float()).reshape(b, s)
    idx = idx.reshape(b, s)
    if replacement == "replace_all":
        pos = torch.arange(s, device=x.device).expand(b, s)
        last = torch.where(hit, pos, torch.full_like(pos, -1)).cummax(1).values  # (b, s) latest hit <= t
        hit = last >= 0
        idx = idx.gather(1, last.clamp_min(0))
    return hit, idx


# -- finding and creating the codebook -----------------------------------------------------------

def find_codebook(adapter, layer: int) -> GraceCodebook | None:
    return getattr(adapter.mlp_out(layer), CHILD, None)


def _ensure_codebook(adapter, layer: int, replacement: str) -> GraceCodebook:
    module = adapter.mlp_out(layer)
    cb = getattr(module, CHILD, None)
    if cb is None:
        if hasattr(module, CHILD):
            raise InputError(f"{type(module).__name__} already has an attribute {CHILD!r}", field="layer")
        cb = GraceCodebook(replacement)
        module.add_module(CHILD, cb.to(execution_device(module)))  # where the module computes, even offloaded
        cb.install(module, adapter.layer(layer) if adapter.spec.flat_tokens else None)
    elif cb.replacement != replacement:
        raise InputError(f"layer {layer}'s GRACE codebook routes with {cb.replacement!r}; an edit with "
                         f"{replacement!r} cannot join it (revert its edits first)", field="replacement")
    return cb


def _drop_codebook_if_empty(adapter, layer: int) -> None:
    module = adapter.mlp_out(layer)
    cb = getattr(module, CHILD, None)
    if cb is not None and not len(cb.entries):
        cb.uninstall()
        del module._modules[CHILD]


@register_attachment
class GraceEdit(Attachment):
    """One GRACE edit as an attachment: an entry it creates and/or an entry it changed.

    `new`: the created entry's state {key, value, radius, label} (named `uid`), or None.
    `modifies`: name of an existing entry this edit changed, with its exact `before` and
    `after` state (split: radius; expand: radius and value; moving average: also the key).
    `group`: uids of every edit in the same patch (they attach and detach together).
    """
    kind = "grace"

    def __init__(self, layer: int, uid: str, replacement: str, new: dict | None = None,
                 modifies: str | None = None, before: dict | None = None, after: dict | None = None,
                 group: list[str] | None = None, action: str = ""):
        self.layer, self.uid, self.replacement = layer, uid, replacement
        self.new, self.modifies, self.before, self.after = new, modifies, before, after
        self.group, self.action = list(group or [uid]), action

    def attach(self, model, adapter=None) -> None:
        adapter = adapter or _adapter(model)
        cb = find_codebook(adapter, self.layer)
        target = cb.entries[self.modifies] if cb is not None and self.modifies in cb.entries else None
        # Check everything before changing anything: a failed attach leaves the model as it was.
        if self.modifies is not None and (target is None or not target.equals(self.before)):
            raise InputError(f"GRACE edit {self.uid} changes key {self.modifies} of layer {self.layer}, which is "
                             f"{'missing' if target is None else 'not in the state it expects'}; the edits "
                             f"are being replayed out of order", field="edit_id")
        if self.new is not None and cb is not None and self.uid in cb.entries:
            raise InputError(f"GRACE key {self.uid} is already in layer {self.layer}'s codebook", field="edit_id")
        cb = _ensure_codebook(adapter, self.layer, self.replacement)
        if target is not None:
            target.load(self.after)
            target.mods.append(self.uid)
        if self.new is not None:
            device = execution_device(adapter.mlp_out(self.layer))
            cb.entries[self.uid] = GraceEntry(*(self.new[f] for f in FIELDS)).to(device)

    def detach(self, model, adapter=None) -> None:
        adapter = adapter or _adapter(model)
        cb = find_codebook(adapter, self.layer)
        if cb is None:
            raise InputError(f"layer {self.layer} has no GRACE codebook to remove {self.uid} from", field="edit_id")
        _check_detachable(cb, set(self.group), self.uid)
        if self.new is not None:
            del cb.entries[self.uid]
        if self.modifies is not None:
            target = cb.entries[self.modifies]
            target.load(self.before)
            target.mods.remove(self.uid)
        _drop_codebook_if_empty(adapter, self.layer)

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, part in (("new", self.new), ("before", self.before), ("after", self.after)):
            for f, t in (part or {}).items():
                out[f"{prefix}.{f}"] = t
        return out

    def config(self) -> dict:
        return {"layer": self.layer, "uid": self.uid, "replacement": self.replacement, "modifies": self.modifies,
                "group": self.group, "action": self.action, "parts": [p for p, v in
                (("new", self.new), ("before", self.before), ("after", self.after)) if v is not None]}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "GraceEdit":
        parts = {p: {f: state[f"{p}.{f}"] for f in FIELDS} for p in config["parts"]}
        return cls(config["layer"], config["uid"], config["replacement"], parts.get("new"), config["modifies"],
                   parts.get("before"), parts.get("after"), config["group"], config.get("action", ""))


def _check_detachable(cb: GraceCodebook, group: set[str], uid: str) -> None:
    """Refuse (before any change) when an edit outside `group` changed what `group` touched."""
    for name, entry in cb.entries.items():
        for k, m in enumerate(entry.mods):
            if name in group or m in group:
                later = [x for x in (entry.mods if name in group else entry.mods[k + 1:]) if x not in group]
                if later:
                    raise InputError(f"GRACE key {name} (touched by edit {uid}) was changed later by GRACE edit "
                                     f"{later[0]} (a split or expand); revert that edit first, or roll back",
                                     field="edit_id")


def _adapter(model):
    from workbench.core.arch import get_adapter
    return get_adapter(model)
