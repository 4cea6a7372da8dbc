"""WISE side memory: the module that lives in the model, its router, and its attachment kind.

The side memory is stored as a *difference* from the main MLP output projection W (out, in):
the side output is `W a + Δ a`, so the router's activation score (the paper's
Δ_act(x) = ||A(x)·(W'_v − W_v)||₂) is simply `||Δ a||` per position, one extra matmul.

Everything the method needs between edits is a buffer of `WISEMemory` (a fresh editor is
made for every edit), so a later edit is a plain list of `WeightChange`s on these buffers and
the session can revert it bit for bit:

- `delta` (out, in): the live side memory (merged over the shards so far), minus W;
- `group_base` (out, in): `delta` when the current merge group began (every shard of the
  group is trained from it, in its own random subspace);
- `taus` (K, out, in): the task vector of each shard of the group (relative to group_base);
- `mask` (out, in): the current shard's random gradient mask (ratio ρ);
- `min_score` (1,): the smallest activation score an edit of the live memory reached;
  the router's threshold is `act_ratio * min_score`;
- `memories` (M, out, in), `thresholds` (M,): archived side memories (retrieve mode);
- `counts` (2,) int64: total edits, edits in the current group.

Routing is per example, as in the paper and EasyEdit: a row's score is the mean of ||Δ a||
over its real (unpadded) positions (or, with `route="max"`, their max), and the whole row reads the side memory iff the score
exceeds the threshold (retrieve mode: the memory with the highest score / threshold).
No row sees another row and padding never enters the mean (or max), so a padded batch gives the
same outputs as one example at a time. Like EasyEdit, the decision uses every token of the
forward call (with teacher forcing, the answer's tokens too); training reads the side
memory at every position of the edit rows, which is what a routed row then sees. In cached
decoding each call decides on its own new tokens.

Example:
    >>> mem = WISEMemory(layer=2, out_features=4, in_features=8, shards=2)
    >>> sorted(mem.state_dict())[:3]
    ['counts', 'delta', 'group_base']
"""
from __future__ import annotations

import math

import torch

from editors.common.side_module import SideModule, SideModuleAttachment
from workbench.core.patch import register_attachment

ATTR = "wise_memory"  # the memory's name on the model: state_dict keys are "wise_memory.*"


class WISEMemory(SideModule):
    """Side memory + router for the MLP output projection of one layer (all state in buffers).

    Example:
        >>> mem = WISEMemory(layer=0, out_features=2, in_features=3, shards=1)
        >>> float(mem.threshold())
        inf
    """

    attr, label = ATTR, "WISE memory"

    def __init__(self, layer: int, out_features: int, in_features: int, shards: int,
                 act_ratio: float = 0.88, retrieve: bool = False, dtype=torch.float32, route: str = "mean"):
        super().__init__(layer)
        self.act_ratio, self.retrieve = float(act_ratio), bool(retrieve)
        self.route = str(route)  # "mean" (paper / EasyEdit) or "max" over a row's real positions
        o, i = int(out_features), int(in_features)
        self.register_buffer("delta", torch.zeros(o, i, dtype=dtype))
        self.register_buffer("group_base", torch.zeros(o, i, dtype=dtype))
        self.register_buffer("taus", torch.zeros(int(shards), o, i, dtype=dtype))
        self.register_buffer("mask", torch.zeros(o, i, dtype=torch.bool))
        self.register_buffer("min_score", torch.full((1,), math.inf, dtype=torch.float32))
        self.register_buffer("memories", torch.zeros(0, o, i, dtype=dtype))
        self.register_buffer("thresholds", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.int64))
        # Not state: set by the trainer to force one side weight on every position (no routing).
        self.train_delta: torch.Tensor | None = None

    def config(self) -> dict:
        return {"layer": self.layer, "out_features": self.delta.shape[0], "in_features": self.delta.shape[1],
                "shards": self.taus.shape[0], "act_ratio": self.act_ratio, "retrieve": self.retrieve, "route": self.route,
                "dtype": str(self.delta.dtype).removeprefix("torch.")}

    def threshold(self) -> torch.Tensor:
        """(1,) the live memory's routing threshold: act_ratio × the weakest edit's score."""
        return self.min_score * self.act_ratio

    def _route(self, _module, args, output):
        a = self.keys_of(args[0])  # (batch, seq, d_ff)
        if self.train_delta is not None:
            return output + (a @ self.train_delta.T).reshape(output.shape)
        deltas, thr = self._active()
        if deltas is None:
            return None
        mask = self._mask(a)  # (batch, seq) float, 1 = real token
        if deltas.shape[0] == 1:  # one memory (the usual case): a plain matmul, no einsum
            d = (a @ deltas[0].to(a.dtype).T)[None]  # (1, batch, seq, out)
        else:
            d = torch.einsum("bsi,moi->mbso", a, deltas.to(a.dtype))  # (m, batch, seq, out)
        score = row_score(d.float().norm(dim=-1), mask, self.route)  # (m, batch): one score per example
        best, which = (score / thr[:, None]).max(0)  # (batch,) each: best memory per example
        use = (best > 1.0)[:, None, None].to(a.dtype)  # (batch, 1, 1)
        # (batch, seq, out): each example's best memory
        chosen = d[0] if d.shape[0] == 1 else d[which, torch.arange(d.shape[1], device=d.device)]
        return output + (use * chosen).reshape(output.shape)

    def _active(self):
        """Stacked (m, out, in) side memories in use and their (m,) thresholds, or (None, None)."""
        live = math.isfinite(float(self.min_score))  # an edit is in the live memory
        if self.memories.shape[0] == 0 and not live:
            return None, None
        if self.memories.shape[0] == 0:  # only the live memory: a view, no copy per forward
            return self.delta[None], self.threshold().clamp_min(1e-12)
        ds = [self.memories] + ([self.delta[None]] if live else [])
        ts = [self.thresholds] + ([self.threshold()] if live else [])
        return torch.cat(ds), torch.cat(ts).clamp_min(1e-12)

    def _mask(self, a: torch.Tensor) -> torch.Tensor:
        b, s = a.shape[:2]
        mask = self.seen[1] if self.seen else None
        if mask is None or mask.shape[0] != b or mask.shape[1] < s:
            return torch.ones(b, s, device=a.device)
        # Cached decoding passes the mask of past + new tokens; the new ones are the last s.
        return mask[:, -s:].to(a.device, torch.float32)


def row_mean(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `dist` (..., batch, seq) over each row's real positions -> (..., batch).

    Example:
        >>> row_mean(torch.tensor([[2., 4., 9.]]), torch.tensor([[1., 1., 0.]]))
        tensor([3.])
    """
    return (dist * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def row_score(dist: torch.Tensor, mask: torch.Tensor, route: str = "mean") -> torch.Tensor:
    """`row_mean`, or with route="max" the max of `dist` over each row's real positions.

    Example:
        >>> row_score(torch.tensor([[2., 4., 9.]]), torch.tensor([[1., 1., 0.]]), "max")
        tensor([4.])
    """
    if route == "max":
        return dist.masked_fill(mask == 0, 0.0).amax(-1)  # scores are norms (>= 0): padding at 0 never wins
    return row_mean(dist, mask)


@register_attachment
class WISEAttachment(SideModuleAttachment):
    """The first WISE edit of a model: attaches a `WISEMemory` (state snapshot) to it.

    Later edits change the memory's buffers through ordinary `WeightChange`s; reverting the
    first edit detaches the memory and removes its hooks, leaving the model as it was.

    Example:
        >>> att = WISEAttachment.from_saved(WISEMemory(0, 2, 3, 1).config(),
        ...                                 WISEMemory(0, 2, 3, 1).state_dict())
        >>> att.kind
        'wise_memory'
    """
    kind = "wise_memory"
    module_class = WISEMemory

    def build(self) -> WISEMemory:
        c = self._config
        return self._load_buffers(WISEMemory(c["layer"], c["out_features"], c["in_features"], c["shards"],
                                             c["act_ratio"], c["retrieve"], getattr(torch, c["dtype"]),
                                             c.get("route", "mean")))
