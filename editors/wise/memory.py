"""WISE side memory: the module that lives in the model, its router, its merges, and its attachment kind.

Every side memory is stored as a *difference* Δ from the main MLP output projection W (out, in):
the side output is `W a + Δ a`. The router's activation score of a token is, as in the reference
code (EasyEdit `WISE.py`, `euc`), `||act(W a + Δ a) − act(W a)||` with `act` the model's MLP
activation (`score="act"`), or the paper's formula `||Δ a||` (`score="linear"`).

Everything the method needs between edits is a buffer of `WISEMemory` (a fresh editor is made for
every edit), so a later edit is a plain list of `WeightChange`s on these buffers and the session
can revert it bit for bit:

- `delta` (out, in): the live shard, the memory being trained (EasyEdit's `new_weight` − W);
- `merged` (out, in): the merged memory (EasyEdit's `layer.weight` − W), zero before a merge;
- `memories` (S, out, in): saved shards — waiting for the next merge, or (retrieve mode) the
  archive the router picks from; `thresholds` (S,): each archived memory's weakest edit score;
- `mask` (out, in): the live shard's random gradient mask (ratio ρ);
- `min_score` (1,): the weakest edit score of the live memory (in merge mode: of every edit so
  far, as EasyEdit never resets it); the router's threshold is `act_ratio * min_score`;
- `counts` (2,) int64: total edits, edits in the live shard.

Routing is per example, as in the paper and EasyEdit: a row's score is the mean of the token
scores over its real (unpadded) positions — `route="auto"` switches to their max for rows of over
100 tokens (EasyEdit's `infer` branch), `"mean"` / `"max"` fix one — and the whole row reads the
chosen memory. Merge mode compares the merged memory with the live shard and uses the larger if it
reaches the threshold (EasyEdit `WISEAdapter.forward`); retrieve mode uses the archived memory with
the highest score among those over their own thresholds if it beats the live shard, else the live
shard if it reaches its threshold. No row sees another row and padding never enters a score, so a
padded batch gives the same outputs as one example at a time. Like EasyEdit, the decision uses every
token of the forward call (with teacher forcing, the answer's tokens too); in cached decoding each
call decides on its own new tokens.

EasyEdit merges pending shards at the first inference after `save_freq` edits and keeps that merge;
here the merged view is computed (and cached) at inference without changing the buffers, so scoring
a model between edits does not change what later edits do (and inference never writes state).

Example:
    >>> mem = WISEMemory(layer=2, out_features=4, in_features=8)
    >>> sorted(mem.state_dict())[:3]
    ['counts', 'delta', 'mask']
"""
from __future__ import annotations

import math

import torch
from peft.utils.merge_utils import calculate_majority_sign_mask, prune

from editors.common.side_module import SideModule, SideModuleAttachment
from workbench.core.errors import InputError
from workbench.core.patch import register_attachment

ATTR = "wise_memory"  # the memory's name on the model: state_dict keys are "wise_memory.*"
LONG_ROW = 100  # route="auto": rows longer than this are scored by their max token (EasyEdit)
OLD_MERGE_WEIGHT = 0.6  # EasyEdit weights an earlier merge 0.6 against 0.4 for the new shards together


class WISEMemory(SideModule):
    """Side memory + router for the MLP output projection of one layer (all state in buffers).

    Example:
        >>> mem = WISEMemory(layer=0, out_features=2, in_features=3)
        >>> float(mem.threshold())
        inf
    """

    attr, label = ATTR, "WISE memory"

    def __init__(self, layer: int, out_features: int, in_features: int, act_ratio: float = 0.88,
                 retrieve: bool = False, dtype=torch.float32, route: str = "auto", score: str = "act",
                 shard_size: int | None = 500, merge_every: int | None = 1000, ties_density: float = 0.53,
                 prefixes: tuple[str, ...] = ()):
        super().__init__(layer)
        self.act_ratio, self.retrieve = float(act_ratio), bool(retrieve)
        self.route, self.score = str(route), str(score)
        self.shard_size = int(shard_size) if shard_size else None
        self.merge_every = int(merge_every) if merge_every else None
        self.ties_density = float(ties_density)
        self.prefixes = tuple(prefixes)  # the generated context prefixes every edit is trained under
        o, i = int(out_features), int(in_features)
        self.register_buffer("delta", torch.zeros(o, i, dtype=dtype))
        self.register_buffer("merged", torch.zeros(o, i, dtype=dtype))
        self.register_buffer("memories", torch.zeros(0, o, i, dtype=dtype))
        self.register_buffer("thresholds", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("mask", torch.zeros(o, i, dtype=torch.bool))
        self.register_buffer("min_score", torch.full((1,), math.inf, dtype=torch.float32))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.int64))
        # Not state: set by the trainer to force one side weight on every position (no routing).
        self.train_delta: torch.Tensor | None = None
        self._view_key, self._view = None, None  # the cached inference view of the buffers
        self.record: list | None = None  # not state: a list here collects each call's (batch,) routing decisions
        self.__dict__["act"] = torch.nn.Identity()  # the MLP activation, set by install (not a submodule)

    def config(self) -> dict:
        return {"layer": self.layer, "out_features": self.delta.shape[0], "in_features": self.delta.shape[1],
                "act_ratio": self.act_ratio, "retrieve": self.retrieve, "route": self.route, "score": self.score,
                "shard_size": self.shard_size, "merge_every": self.merge_every, "ties_density": self.ties_density,
                "prefixes": list(self.prefixes), "dtype": str(self.delta.dtype).removeprefix("torch.")}

    def install(self, model, adapter) -> None:
        self.__dict__["act"] = adapter.mlp_act(self.layer)  # scores compare act(W a + Δ a) with act(W a)
        super().install(model, adapter)

    def threshold(self) -> torch.Tensor:
        """(1,) the live memory's routing threshold: act_ratio × the weakest edit's score."""
        return self.min_score * self.act_ratio

    def token_scores(self, out: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """(..., seq) activation score of side outputs `out + d` against main outputs `out` (..., seq, o)."""
        if self.score == "linear":
            return d.float().norm(dim=-1)
        return (self.act(out + d) - self.act(out)).float().norm(dim=-1)

    def _route(self, _module, args, output):
        a = self.keys_of(args[0])  # (batch, seq, d_ff)
        if self.train_delta is not None:
            return output + (a @ self.train_delta.T).reshape(output.shape)
        view = self._active()
        if view is None:
            return None
        deltas, thr, live = view  # (m, out, in), (m,), index of the live shard or -1
        out = output.reshape(*a.shape[:2], -1)  # (batch, seq, out)
        mask = self._mask(a)  # (batch, seq) float, 1 = real token
        d = torch.einsum("bsi,moi->mbso", a, deltas.to(a.dtype)) if deltas.shape[0] > 1 \
            else (a @ deltas[0].to(a.dtype).T)[None]  # (m, batch, seq, out)
        score = row_score(self.token_scores(out[None], d), mask, self.route)  # (m, batch)
        which, use = self._decide(score, thr, live)  # (batch,) each
        if self.record is not None:
            self.record.append(use.detach().cpu())
        rows = torch.arange(d.shape[1], device=d.device)
        chosen = d[which, rows] * use[:, None, None].to(a.dtype)  # (batch, seq, out)
        return output + chosen.reshape(output.shape)

    def _decide(self, score: torch.Tensor, thr: torch.Tensor, live: int):
        """Which memory each row reads, and whether it reads one: (batch,) long, (batch,) bool."""
        if not self.retrieve:  # the larger of merged and live, if it reaches the (shared) threshold
            best, which = score.max(0)
            return which, best >= thr[0]
        clears = score > thr[:, None]  # (m, batch)
        if live >= 0:
            s_live = score[live]
            clears[live] = False
        else:
            s_live = score.new_zeros(score.shape[1])
        best, which = score.masked_fill(~clears, -1.0).max(0)  # the best archived memory over its threshold
        archived = best > s_live
        use_live = ~archived & (s_live >= thr[live]) if live >= 0 else torch.zeros_like(archived)
        which = torch.where(use_live, torch.full_like(which, max(live, 0)), which)
        return which, archived | use_live

    def _active(self):
        """((m, out, in) memories in use, (m,) thresholds, index of the live shard or -1), or None."""
        key = (int(self.counts[0]), int(self.counts[1]), self.memories.shape[0], self.delta._version,
               self.merged._version, self.memories._version, self.min_score._version, id(self.delta),
               id(self.merged), id(self.memories), id(self.min_score), id(self.thresholds))
        if key != self._view_key:
            self._view_key, self._view = key, self._build_view()
        return self._view

    def _build_view(self):
        n_live = int(self.counts[1])
        thr = self.threshold().clamp_min(1e-12)
        if self.retrieve:
            ds = [self.memories] + ([self.delta[None]] if n_live else [])
            ts = [self.thresholds * self.act_ratio] + ([thr] if n_live else [])
            if sum(x.shape[0] for x in ds) == 0:
                return None
            return torch.cat(ds), torch.cat(ts).clamp_min(1e-12), (self.memories.shape[0] if n_live else -1)
        merged, pending = self.merged, [self.memories[k] for k in range(self.memories.shape[0])]
        if self.shard_size and int(self.counts[0]) >= self.shard_size and (pending or n_live):
            # EasyEdit's merge at the first inference with shards pending (as a view, see the module doc)
            merged = self.merge(pending + ([self.delta] if n_live else []))
            n_live = 0
        ds = ([merged] if bool(merged.any()) else []) + ([self.delta] if n_live else [])
        if not ds:
            return None
        return torch.stack(ds), thr.expand(len(ds)), (len(ds) - 1 if n_live else -1)

    def merge(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """The merged memory after merging `shards` (task vectors, each (out, in)) into `merged`:
        TIES of the shards alone for the first merge, else of the shards (0.4 together) and the
        earlier merge (0.6), as EasyEdit's `merge_weight`."""
        if not bool(self.merged.any()):
            return ties_merge(shards, [1.0 / len(shards)] * len(shards), self.ties_density)
        return ties_merge(shards + [self.merged], [(1 - OLD_MERGE_WEIGHT) / len(shards)] * len(shards)
                          + [OLD_MERGE_WEIGHT], self.ties_density)

    def _mask(self, a: torch.Tensor) -> torch.Tensor:
        b, s = a.shape[:2]
        mask = self.seen[1] if self.seen else None
        if mask is None or mask.shape[0] != b or mask.shape[1] < s:
            return torch.ones(b, s, device=a.device)
        # Cached decoding passes the mask of past + new tokens; the new ones are the last s.
        return mask[:, -s:].to(a.device, torch.float32)


def ties_merge(tensors: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES (trim to the top `density` by magnitude, elect the sign of the weighted sum, average the
    agreeing entries) with the *weighted* mean over agreeing entries, as EasyEdit's GTA('magnitude',
    'sum', normalize=True). peft's `ties` divides by the count of agreeing entries instead, which is
    the same only for equal weights, so peft supplies the trim and the sign election here.

    Example:
        >>> ties_merge([torch.tensor([1., -2.]), torch.tensor([3., 2.])], [0.25, 0.75], 1.0)
        tensor([2.5000, 2.0000])
    """
    stacked = torch.stack([prune(t, density, "magnitude") if density < 1 else t for t in tensors])  # (n, o, i)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * (stacked.dim() - 1))
    weighted = stacked * w
    agree = calculate_majority_sign_mask(weighted, "total").to(stacked.dtype)  # (n, o, i)
    divisor = (w * agree).sum(0)
    return (weighted * agree).sum(0) / torch.where(divisor == 0, torch.ones_like(divisor), divisor)


def row_mean(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `dist` (..., batch, seq) over each row's real positions -> (..., batch).

    Example:
        >>> row_mean(torch.tensor([[2., 4., 9.]]), torch.tensor([[1., 1., 0.]]))
        tensor([3.])
    """
    return (dist * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def row_score(dist: torch.Tensor, mask: torch.Tensor, route: str = "mean") -> torch.Tensor:
    """A row's score from its token scores `dist` (..., batch, seq): the mean over its real positions,
    their max (route="max"), or with route="auto" the max for rows of over 100 real tokens.

    Example:
        >>> row_score(torch.tensor([[2., 4., 9.]]), torch.tensor([[1., 1., 0.]]), "max")
        tensor([4.])
    """
    if route == "mean":
        return row_mean(dist, mask)
    top = dist.masked_fill(mask == 0, 0.0).amax(-1)  # scores are norms (>= 0): padding at 0 never wins
    if route == "max":
        return top
    return torch.where(mask.sum(-1) > LONG_ROW, top, row_mean(dist, mask))


@register_attachment
class WISEAttachment(SideModuleAttachment):
    """The first WISE edit of a model: attaches a `WISEMemory` (state snapshot) to it.

    Later edits change the memory's buffers through ordinary `WeightChange`s; reverting the
    first edit detaches the memory and removes its hooks, leaving the model as it was.

    Example:
        >>> att = WISEAttachment.from_saved(WISEMemory(0, 2, 3).config(), WISEMemory(0, 2, 3).state_dict())
        >>> att.kind
        'wise_memory'
    """
    kind = "wise_memory"
    module_class = WISEMemory

    def build(self) -> WISEMemory:
        c = self._config
        if "shard_size" not in c:
            raise InputError("this WISE memory was made by an earlier version of the workbench (TIES re-merged "
                             "after every edit), whose state the current WISE cannot read; replay its edits "
                             "from their requests instead")
        return self._load_buffers(WISEMemory(c["layer"], c["out_features"], c["in_features"], c["act_ratio"],
                                             c["retrieve"], getattr(torch, c["dtype"]), c["route"], c["score"],
                                             c["shard_size"], c["merge_every"], c["ties_density"],
                                             tuple(c["prefixes"])))
