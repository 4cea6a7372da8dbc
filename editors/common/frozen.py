"""Blocks whose output cannot change during an edit, run once.

An editor that optimises something at layer L (a side memory, a value vector) and runs the model
many times on the same inputs need not run blocks 0..L-1 again: their outputs are constant.
"""
from __future__ import annotations

import contextlib
import inspect

import torch


@contextlib.contextmanager
def lower_blocks_cached(adapter, layer: int, run):
    """Run `run()` once, then make blocks 0..layer-1 return those outputs until exit."""
    blocks = [adapter.layer(i) for i in range(layer)]
    seen: dict[int, object] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    with swapped_forward(blocks, [lambda *a, _o=seen[i], **k: _o for i in range(layer)]):  # inputs never change
        yield


@contextlib.contextmanager
def swapped_forward(modules, forwards):
    """Within: each module's `forward` is the given function. After: what it was — the class's,
    or an instance-level wrapper such as accelerate's offload hook, which must survive."""
    saved = [m.__dict__.get("forward") for m in modules]
    for m, f in zip(modules, forwards):
        m.forward = f
    try:
        yield
    finally:
        for m, old in zip(modules, saved):
            if old is None:
                del m.forward
            else:
                m.forward = old


def logits_only_at(model, positions: torch.Tensor) -> dict:
    """Forward kwargs that make the model compute logits only at `positions` (one index list for
    every row, `logits_to_keep`), or {} for a model whose forward does not take it."""
    return {"logits_to_keep": positions} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
