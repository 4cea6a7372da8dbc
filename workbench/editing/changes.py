"""How big a recorded change is, layer by layer (the History page's and the HTML report's map)."""
from __future__ import annotations

import re


def layer_changes(adapter, patch, *, split: bool = False):
    """{layer: size of the change} for one edit's patch: the Frobenius norm of after − before of
    the weights it touched, plus the norm of any attachment's state (a side memory, a codebook,
    a LoRA adapter) in the layer it is attached to. With `split`, the two apart as
    (weights, attached): they are different quantities (a codebook's norm is not a change of
    size 101) and belong on different colour scales."""
    import torch
    prefixes = [(i, adapter.module_name(adapter.layer(i)) + ".") for i in range(adapter.num_layers)]
    out: dict[int, float] = {}

    def layer_of(name: str) -> int | None:
        for i, p in prefixes:
            if name.startswith(p):
                return i
        m = re.search(r"(?:layers|h|layer|blocks)[._](\d+)[._]", name)  # attachment keys
        return int(m.group(1)) if m else None

    attached: dict[int, float] = {}
    for w in patch.weights:
        li = layer_of(w.name)
        if li is not None and w.before.shape == w.after.shape:
            out[li] = out.get(li, 0.0) + float(torch.linalg.vector_norm((w.after - w.before).float()))
    for a in patch.attachments:
        cfg = a.config()
        fixed = cfg.get("layer") if isinstance(cfg.get("layer"), int) else None
        for k, t in a.state().items():
            li = fixed if fixed is not None else layer_of(k)
            if li is not None and t.is_floating_point():
                attached[li] = attached.get(li, 0.0) + float(torch.linalg.vector_norm(t.float()))
    if split:
        return out, attached
    return {i: out.get(i, 0.0) + attached.get(i, 0.0) for i in set(out) | set(attached)}
