"""One GRACE edit: read the key, decide add / split / expand, train the value.

Kept apart from the codebook (`codebook.py`, the data structure and its routing) and the
editor (`__init__.py`, hyperparameters and the contract), so each stays small.

Example:
    >>> att = edit_one(ctx, batch.pairs[0], hp, seed=0)  # doctest: +SKIP
    >>> att.action, att.uid                                                   # doctest: +SKIP
    ('add', 'e0')
"""
from __future__ import annotations

import torch

from workbench.editing.contract import trainable_only
from workbench.core.offload import execution_device

from .codebook import FIELDS, GraceEdit, find_codebook

SPLIT_MARGIN = 1e-5  # EasyEdit shrinks the old key's radius to d/2 - 1e-5 so the two never tie
EXPAND_MARGIN = 1e-3  # relative: an expanded radius covers its query despite rounding (see _plan)


def edit_one(ctx, pair: tuple[list[int], list[int]], hp, seed: int) -> GraceEdit:
    """Attach one checked request's edit, given as its (prompt ids, target ids), to `ctx.model`
    (trained) and return it; `ctx` detaches it again if anything fails."""
    p, a = pair
    module = ctx.adapter.mlp_out(hp.layer)
    device = execution_device(module)  # not an offloaded layer's meta stand-in
    query, own_out = _read_key(ctx, module, p)           # (d_in,), (d_out,)
    label = torch.tensor(a, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)            # cold init without touching the global RNG
    fresh = (torch.rand(own_out.shape[0], generator=gen).to(device) if hp.val_init == "cold" else own_out.clone())
    att, trained = _plan(find_codebook(ctx.adapter, hp.layer), query, fresh, label, hp)
    att.attach(ctx.model, ctx.adapter)
    ctx.on_error(lambda: att.detach(ctx.model, ctx.adapter))
    att.stats = _train(ctx, att, trained, p, a, hp)
    return att


@torch.no_grad()
def _read_key(ctx, module, prompt_ids: list[int]):
    """The projection's input at the prompt's last token, and its own (unreplaced) output there."""
    seen = []
    h = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])[-1]))
    try:
        ctx.model(input_ids=torch.tensor([prompt_ids], device=next(ctx.model.parameters()).device))
    finally:
        h.remove()
    q = seen[0].detach().clone()                         # (d_in,); OPT's rows are (batch*seq, d): last row
    w = ctx.adapter.weight(module)                       # (d_out, d_in) whatever the orientation
    out = w @ q.to(w.dtype)
    bias = getattr(module, "bias", None)
    return q, (out + bias if bias is not None else out).detach()


def _plan(cb, query, fresh, label, hp):
    """The attachment for this edit, and the name of the entry whose value gets trained."""
    names = cb.names() if cb is not None else []
    uid = f"e{_next_uid(cb)}"
    new = {"key": query, "value": fresh, "radius": torch.tensor(hp.eps_init, dtype=query.dtype,
                                                                device=query.device), "label": label}
    common = dict(layer=hp.layer, uid=uid, replacement=hp.replacement)
    if not names:
        return GraceEdit(**common, new=new, action="add"), uid
    keys = torch.stack([cb.entries[n].key for n in names]).float()          # (n, d_in)
    dist = (keys - query.float()).norm(dim=1)                               # (n,) exact 0 for the same key
    d, i = dist.min(0)
    near = cb.entries[names[i]]
    d_val = d.to(near.radius.dtype)
    if d_val > hp.eps_init + near.radius:                                   # far from every key: add
        return GraceEdit(**common, new=new, action="add"), uid
    before = near.snapshot()
    after = {f: t.clone() for f, t in before.items()}
    same = near.label.shape == label.shape and torch.equal(near.label.cpu(), label)
    if not same and d_val > 0:                                              # conflict: split both radii
        after["radius"] = d_val / 2 - SPLIT_MARGIN
        new["radius"] = (d_val / 2).reshape(())
        return GraceEdit(**common, new=new, modifies=names[i], before=before, after=after, action="split"), uid
    if not same:                                                            # the same prompt, a new target
        after["label"], after["value"] = label, fresh
        return GraceEdit(**common, modifies=names[i], before=before, after=after, action="overwrite"), names[i]
    if d_val > near.radius:                                                 # same target: expand
        # A hair beyond the query: routing recomputes distances by a matrix product (and reads the
        # activation inside a longer sequence), whose rounding can put the query just outside a
        # radius set to exactly `d`; then the new prompt would miss the key it was expanded for.
        after["radius"] = (d_val * (1 + EXPAND_MARGIN)).reshape(())
        if hp.eps_expand == "moving_average":
            after["key"] = 0.5 * near.key + 0.5 * query.to(near.key.dtype)
    return GraceEdit(**common, modifies=names[i], before=before, after=after, action="expand"), names[i]


def _next_uid(cb) -> int:
    if cb is None:
        return 0
    used = list(cb.entries.keys()) + [m for e in cb.entries.values() for m in e.mods]
    return 1 + max((int(u[1:]) for u in used if u[1:].isdigit()), default=-1)


def _train(ctx, att: GraceEdit, name: str, p: list[int], a: list[int], hp) -> dict:
    """Adam on the chosen entry's value: cross-entropy of the target after prompt + target."""
    model = ctx.model
    cb = find_codebook(ctx.adapter, hp.layer)
    entry = cb.entries[name]
    value = torch.nn.Parameter(entry.value.detach().clone())       # (d_out,)
    device = value.device
    ids = torch.tensor([p + a], device=device)                     # (1, L)
    pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=device)  # positions predicting the target
    tgt = torch.tensor(a, device=device)
    losses = []
    try:
        with trainable_only(model):                                 # only the value learns; no stray .grad
            cb.train_override = (name, value)
            opt = torch.optim.Adam([value], lr=hp.lr)
            for _ in range(hp.n_iter):
                logits = model(input_ids=ids).logits[0, pos].float()    # (t, vocab)
                loss = torch.nn.functional.cross_entropy(logits, tgt)
                losses.append(loss.item())
                if loss.item() < hp.early_stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        cb.train_override = None
    trained = value.detach().clone()
    with torch.no_grad():
        entry.value.copy_(trained)
    (att.new if att.new is not None and name == att.uid else att.after)["value"] = trained.clone()
    return {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]}


__all__ = ["edit_one", "FIELDS"]
