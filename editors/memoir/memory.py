"""MEMOIR's residual memory: the module that lives in the model, its masks and its router.

One zero-initialised matrix W_m (out, in) sits beside the MLP output projection W of one layer:
the layer writes `W a + W_m (a ⊙ m)`, where m (in,) is a sparse mask of the *query*. An edit
trains only the columns of W_m its mask picks, so edits with different masks overwrite little
of each other. Everything is a buffer (a later edit is a plain list of `WeightChange`s):

- `residual` (out, in): W_m;
- `perm` (in,) int64: TopHash's fixed random permutation;
- `background` (in,): the mean MLP key over generic text, subtracted before the top-k
  (the paper's "mean_decentered" aggregation);
- `masks` (capacity, in) bool and `count` (1,) int64: every edit's mask, in edit order; the
  capacity doubles when full, so an edit's patch records one new row, not the whole table;
- `keys` (capacity, in), `key_edit` (capacity,) int64, `key_count` (1,): only with
  `router="key"` (ours): the centred, unit-norm keys of each edit row at the positions that
  predict its target, and the edit each belongs to;
- `subj_hash`, `subj_len`, `subj_edit` (capacity,) int64, `subj_count` (1,): only with
  `key_gate="subject"`: a hash of each edited subject's token ids (as the prompt has them, and
  alone with and without a leading space) and the edit it names.

A row's mask (`mask_of`): its keys a_t averaged over its real positions, minus `background`;
the k = `top_k` largest magnitudes; their indices sent through `perm` (TopHash). With
`masks="random"` (the paper's ablation) the k positions are instead drawn from a generator
seeded by the row's token ids: a mask that identifies the exact input but carries nothing of
its meaning.

Routing (`router="mask"`, the paper): a row reads the memory iff its mask's best overlap
with a stored edit mask, |m ∩ m_e| / k, is at least τ = `threshold`; it then reads W_m through
its *own* mask. `router="none"` (the paper's ablation "without conditional routing") reads W_m
for every row.

`router="key"` (ours, not the paper's) decides per position instead of per row: position t reads
the memory iff its centred, unit-norm key (a_t − background)/‖·‖ has cosine ≥ τ with a stored edit
key, and then reads W_m through *that edit's* mask. A position sees only itself, so the decision is
causal and the same in teacher-forced scoring, in one call and in cached decoding. Why: on the
shipped model a query's mean-pooled mask is mostly its template (see the README), so the paper's
router sends nearly every same-template prompt to the memory; the key at the answer position
tells edits apart (measured in the README and issue 16's note).

`key_gate="subject"` (ours too) lets position t consider only the edits whose subject's token ids
occur in the row ending at or before t (an n-gram hash lookup; in cached decoding the subjects an
earlier call saw stay candidates). It makes the key comparison a handful of dot products instead
of one per stored key, and a query that names no edited subject never reads the memory; the price
is that a query must name the subject with the same tokens (a subject split across a cached
decoding step is not seen).

The decision and the mask use every real position of the forward call, as WISE's router does;
in cached decoding a call that only extends earlier ones (its attention mask is longer than its
tokens) keeps the decision and mask its prompt got, so a generated answer is read as the prompt
was routed.
"""
from __future__ import annotations

import hashlib

import torch

from editors.common.side_module import SideModule, SideModuleAttachment
from workbench.core.patch import register_attachment

ATTR = "memoir_memory"  # state_dict keys "memoir_memory.*"
MASKS = ("tophash", "random")
ROUTERS = ("mask", "none", "key")
GATES = ("none", "subject")
_P1, _P2, _BASE = 2_147_483_629, 2_147_483_587, 1_000_003  # two primes < 2^31 and a base: a 62-bit n-gram hash


class MEMOIRMemory(SideModule):
    """Residual memory + mask router for the MLP output projection of one layer.

    Example:
        >>> mem = MEMOIRMemory(layer=0, out_features=2, in_features=8, top_k=3)
        >>> int(mem.count), mem.masks.shape
        (0, torch.Size([4, 8]))
    """

    attr, label = ATTR, "MEMOIR memory"

    def __init__(self, layer: int, out_features: int, in_features: int, top_k: int, threshold: float = 0.4,
                 masks: str = "tophash", router: str = "mask", seed: int = 0,
                 dtype=torch.float32, capacity: int = 4, key_threshold: float = 0.7, key_gate: str = "none"):
        super().__init__(layer)
        self.top_k, self.tau = int(top_k), float(threshold)
        self.key_tau, self.key_gate = float(key_threshold), str(key_gate)
        self.mask_kind, self.router, self.seed = str(masks), str(router), int(seed)
        o, i = int(out_features), int(in_features)
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("residual", torch.zeros(o, i, dtype=dtype))
        self.register_buffer("perm", torch.randperm(i, generator=g))
        self.register_buffer("background", torch.zeros(i, dtype=torch.float32))
        self.register_buffer("masks", torch.zeros(capacity, i, dtype=torch.bool))
        self.register_buffer("count", torch.zeros(1, dtype=torch.int64))
        kc = capacity if router == "key" else 0
        self.register_buffer("keys", torch.zeros(kc, i, dtype=torch.float32))
        self.register_buffer("key_edit", torch.zeros(kc, dtype=torch.int64))
        self.register_buffer("key_count", torch.zeros(1, dtype=torch.int64))
        sc = capacity if router == "key" and key_gate == "subject" else 0
        for name in ("subj_hash", "subj_len", "subj_edit"):
            self.register_buffer(name, torch.zeros(sc, dtype=torch.int64))
        self.register_buffer("subj_count", torch.zeros(1, dtype=torch.int64))
        self._prev_hits = None  # (rows, edits) candidates an earlier call of a cached decoding saw
        # Not state: set by the trainer, the columns being trained and their values (out, k).
        self.train_cols: torch.Tensor | None = None
        self.train_values: torch.Tensor | None = None
        self._last = None  # (masks (b, in) bool, use (b,) bool) of the last routed call

    def config(self) -> dict:
        return {"layer": self.layer, "out_features": self.residual.shape[0], "in_features": self.residual.shape[1],
                "top_k": self.top_k, "threshold": self.tau, "masks": self.mask_kind, "router": self.router,
                "seed": self.seed, "key_threshold": self.key_tau, "key_gate": self.key_gate,
                "dtype": str(self.residual.dtype).removeprefix("torch.")}

    @property
    def n(self) -> int:
        return int(self.count)

    # -- masks ---------------------------------------------------------------------------
    def mask_of(self, a: torch.Tensor, real: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, in) bool masks of rows of keys a (batch, seq, in) with real positions (batch, seq)."""
        b, _, d = a.shape
        out = torch.zeros(b, d, dtype=torch.bool, device=a.device)
        if self.mask_kind == "random":
            for r in range(b):  # a per-input random draw: the input's token ids seed it
                toks = ids[r][real[r].bool()] if ids is not None else torch.zeros(0, dtype=torch.long)
                digest = hashlib.sha256(toks.cpu().numpy().tobytes() + str(self.seed).encode()).digest()
                g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
                out[r, torch.randperm(d, generator=g)[:self.top_k].to(a.device)] = True
            return out
        w = real.to(a.dtype)[..., None]  # (batch, seq, 1)
        agg = (a * w).sum(1) / w.sum(1).clamp_min(1.0) - self.background.to(a.dtype)  # (batch, in)
        idx = agg.abs().topk(self.top_k, dim=-1).indices  # (batch, k)
        out.scatter_(1, self.perm.to(a.device)[idx], True)  # TopHash: the top-k sent through perm
        return out

    def overlaps(self, m: torch.Tensor) -> torch.Tensor:
        """(batch, n) |m ∩ m_e| / k of query masks m (batch, in) with every stored edit mask."""
        stored = self.masks[:self.n].to(m.device)
        return (m.float() @ stored.float().T) / self.top_k

    def append(self, mask: torch.Tensor, keys: torch.Tensor | None = None,
               subjects: list[list[int]] | None = None) -> None:
        """Store one edit's mask (in,), and for router="key" its keys (p, in) and, gated, its
        subject's token-id variants, doubling the tables when full (so a patch records the new
        rows, not the whole table, most times)."""
        n = self.n
        if self.key_gate == "subject" and subjects:
            ns, variants = int(self.subj_count), sorted({tuple(v) for v in subjects if v})
            self._room(("subj_hash", "subj_len", "subj_edit"), ns + len(variants))
            for j, v in enumerate(variants):
                self.subj_hash[ns + j] = ngram_hashes(torch.tensor([v]), len(v))[0, 0]
                self.subj_len[ns + j] = len(v)
                self.subj_edit[ns + j] = n
            self.subj_count += len(variants)
        self._room(("masks",), n + 1)
        self.masks[n] = mask.to(self.masks.device)
        if self.router == "key" and keys is not None:
            nk, p = int(self.key_count), keys.shape[0]
            self._room(("keys", "key_edit"), nk + p)
            self.keys[nk:nk + p] = keys.to(self.keys.device, self.keys.dtype)
            self.key_edit[nk:nk + p] = n
            self.key_count += p
        self.count += 1

    def _room(self, names: tuple[str, ...], rows: int) -> None:
        """Double the buffers `names` (rows along dim 0) until they hold `rows` rows."""
        while getattr(self, names[0]).shape[0] < rows:
            for name in names:
                t = getattr(self, name)
                setattr(self, name, torch.cat([t, t.new_zeros((max(t.shape[0], 1),) + t.shape[1:])]))

    def centred_keys(self, a: torch.Tensor) -> torch.Tensor:
        """(..., in) unit-norm a − background: what router="key" compares."""
        return torch.nn.functional.normalize(a.float() - self.background.to(a.device), dim=-1)

    def _route(self, _module, args, output):
        a = self.keys_of(args[0])  # (batch, seq, in)
        _, mask, ids = self.seen if self.seen else (None, None, None)
        if self.train_cols is not None:  # training one edit: its columns, every position
            add = a[..., self.train_cols] @ self.train_values.T  # (batch, seq, out)
            return output + add.reshape(output.shape).to(output.dtype)
        if self.n == 0:
            return None
        if self.router == "key":
            return output + self._by_key(a, ids, mask).reshape(output.shape).to(output.dtype)
        b, s = a.shape[:2]
        continuing = mask is not None and mask.shape[1] > s
        if continuing and self._last is not None and self._last[0].shape[0] == b:
            m, use = self._last  # cached decoding: the prompt's decision
        else:
            real = mask[:, -s:].to(a.device) if mask is not None and mask.shape[1] >= s else \
                torch.ones(b, s, device=a.device)
            m = self.mask_of(a.detach().float(), real, ids)
            use = self.decide(m, ids, real)
            self._last = (m, use)
        if not bool(use.any()):
            return None
        add = (a * m[:, None, :].to(a.dtype)) @ self.residual.to(a.dtype).T  # (batch, seq, out)
        add = add * use[:, None, None].to(a.dtype)
        return output + add.reshape(output.shape)

    def _by_key(self, a: torch.Tensor, ids, mask) -> torch.Tensor:
        """(batch, seq, out) router="key": each position reads W_m through the mask of the edit
        whose key it matches best, if the cosine reaches key_tau; else nothing."""
        b, s = a.shape[:2]
        out = torch.zeros(b, s, self.residual.shape[0], dtype=a.dtype, device=a.device)
        nk = int(self.key_count)
        if self.key_gate == "subject":
            best, which = self._gated_scores(a, ids, mask)
        else:
            q = self.centred_keys(a.detach())  # (batch, seq, in)
            best, which = (q @ self.keys[:nk].to(q.device).T).max(-1)  # (batch, seq) each
        use = best >= self.key_tau  # (batch, seq)
        if bool(use.any()):
            pos = use.nonzero(as_tuple=True)
            m = self.masks[self.key_edit[which[pos]]].to(a.dtype)  # (p, in): each position's edit mask
            out[pos] = (a[pos] * m) @ self.residual.to(a.dtype).T  # (p, out)
        return out

    def _gated_scores(self, a: torch.Tensor, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq) best cosine and key index, over the keys of the edits whose subject occurs
        in the row at or before each position (-inf where none does)."""
        b, s = a.shape[:2]
        best = torch.full((b, s), -float("inf"), device=a.device)
        which = torch.zeros(b, s, dtype=torch.long, device=a.device)
        continuing = mask is not None and mask.shape[1] > s
        prev = self._prev_hits if continuing and self._prev_hits is not None and \
            self._prev_hits[2] == b else None
        rows, ends, edits = self.subject_hits(ids) if ids is not None else (torch.zeros(0, dtype=torch.long),) * 3
        if prev is not None:  # subjects earlier calls saw precede every position of this one
            rows, ends, edits = torch.cat([prev[0], rows]), torch.cat([torch.full_like(prev[0], -1), ends]), \
                torch.cat([prev[1], edits])
        self._prev_hits = (rows, edits, b)
        if rows.numel() == 0:
            return best, which
        nk = int(self.key_count)
        key_edit = self.key_edit[:nk].cpu()  # index bookkeeping on the CPU, as subject_hits returns it
        lo = torch.searchsorted(key_edit, edits)  # each hit's edit's first key (keys are in edit order)
        hi = torch.searchsorted(key_edit, edits, right=True)
        width = int((hi - lo).max())
        idx = lo[:, None] + torch.arange(width)[None]  # (h, width)
        valid = idx < hi[:, None]
        idx = idx.clamp_max(nk - 1)
        q = self.centred_keys(a.detach()[rows.to(a.device)])  # (h, seq, in)
        k = self.keys[idx.to(self.keys.device)].to(q.device)  # (h, width, in)
        sc = q @ k.transpose(1, 2)  # (h, seq, width)
        sc = sc.masked_fill(~valid[:, None, :].to(sc.device), -float("inf"))
        after = torch.arange(s)[None, :] >= ends[:, None]  # (h, seq): the subject has been read
        sc = sc.masked_fill(~after[..., None].to(sc.device), -float("inf"))
        hit_best, hit_which = sc.max(-1)  # (h, seq)
        hit_key = torch.gather(idx.to(sc.device), 1, hit_which)  # (h, seq) key index
        for h in range(rows.numel()):  # few hits: one per row that names an edited subject
            r = int(rows[h])
            better = hit_best[h] > best[r]
            best[r] = torch.where(better, hit_best[h], best[r])
            which[r] = torch.where(better, hit_key[h], which[r])
        return best, which

    def subject_hits(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where stored subjects occur in ids (batch, seq): (h,) rows, (h,) end positions (of the
        subject's last token) and (h,) edits, one entry per (occurrence, edit)."""
        ns = int(self.subj_count)
        hashes, lens, owners = self.subj_hash[:ns].cpu(), self.subj_len[:ns].cpu(), self.subj_edit[:ns].cpu()
        ids = ids.cpu()
        rows, ends, edits = [], [], []
        for L in sorted(set(lens.tolist())):
            if L > ids.shape[1]:
                continue
            h = ngram_hashes(ids, L)  # (batch, seq - L + 1)
            pick = lens == L
            table, who = hashes[pick], owners[pick]
            order = table.argsort()
            table, who = table[order], who[order]
            hit = torch.isin(h, table)
            if not bool(hit.any()):
                continue
            r, start = hit.nonzero(as_tuple=True)
            vals = h[r, start]
            left, right = torch.searchsorted(table, vals), torch.searchsorted(table, vals, right=True)
            count = right - left  # edits sharing this subject
            rep = torch.repeat_interleave(torch.arange(r.numel()), count)
            offs = torch.arange(int(count.sum())) - torch.repeat_interleave(count.cumsum(0) - count, count)
            rows.append(r[rep])
            ends.append(start[rep] + L - 1)
            edits.append(who[left[rep] + offs])
        if not rows:
            return (torch.zeros(0, dtype=torch.long),) * 3
        rows, ends, edits = torch.cat(rows), torch.cat(ends), torch.cat(edits)
        # One entry per (row, edit): its earliest end, so a later mention adds nothing.
        key = rows * (self.n + 1) + edits
        order = torch.argsort(ends)
        key, rows, ends, edits = key[order], rows[order], ends[order], edits[order]
        first = _first_of(key)
        return rows[first], ends[first], edits[first]

    def decide(self, m: torch.Tensor, ids, real) -> torch.Tensor:
        """(batch,) bool: which rows read the memory."""
        if self.router == "none":
            return torch.ones(m.shape[0], dtype=torch.bool, device=m.device)
        return self.overlaps(m).max(-1).values >= self.tau


def ngram_hashes(ids: torch.Tensor, n: int) -> torch.Tensor:
    """(batch, seq - n + 1) int64 hash of every n-gram of token ids (batch, seq): two polynomial
    hashes modulo primes below 2^31 (no int64 overflow), packed into one 62-bit value.

    Example:
        >>> h = ngram_hashes(torch.tensor([[5, 6, 7, 5, 6]]), 2)
        >>> bool(h[0, 0] == h[0, 3]), bool(h[0, 0] == h[0, 1])
        (True, False)
    """
    win = ids.long().unfold(1, n, 1)  # (batch, seq - n + 1, n)
    out = []
    for p in (_P1, _P2):
        powers = torch.tensor([pow(_BASE, n - 1 - j, p) for j in range(n)], dtype=torch.long)  # (n,)
        out.append(((win % p) * powers).remainder(p).sum(-1).remainder(p))  # each product < p² < 2^62
    return out[0] * _P2 + out[1]


def _first_of(values: torch.Tensor) -> torch.Tensor:
    """Index of the first occurrence of each distinct value of a 1-D tensor.

    Example:
        >>> _first_of(torch.tensor([4, 2, 4, 9])).tolist()
        [1, 0, 3]
    """
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, inverse, torch.arange(inverse.numel()), reduce="amin")


@register_attachment
class MEMOIRAttachment(SideModuleAttachment):
    """The first MEMOIR edit of a model attaches the memory; later edits change its buffers.

    Example:
        >>> mem = MEMOIRMemory(0, 2, 8, 3)
        >>> MEMOIRAttachment(mem.config(), mem.state_dict()).kind
        'memoir_memory'
    """
    kind = "memoir_memory"
    module_class = MEMOIRMemory

    def build(self) -> MEMOIRMemory:
        c = self._config
        return self._load_buffers(MEMOIRMemory(
            c["layer"], c["out_features"], c["in_features"], c["top_k"], c["threshold"], c["masks"], c["router"],
            c["seed"], getattr(torch, c["dtype"]), key_threshold=c.get("key_threshold", 0.7),
            key_gate=c.get("key_gate", "none")))
