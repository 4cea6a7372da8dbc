"""`lora-retrieve`: send each input to the recorded LoRA adapter that holds it, or to none.

Adapters trained apart interfere when merged (`merge`, `workbench bench merge`). MOS (Model
Surgery, AAAI 2025) keeps them apart instead and picks one per input with the model's own
features, training-free, then refines the pick with the chosen adapter's features. Here, for
edits:

- **Keys.** Every adapter records the prompts it was trained on (`store.py`). This edit runs
  them through the model and keeps, per adapter, the hidden state entering block K (the first
  block any adapter of the set adapts, so no adapter of the set has acted yet) at each prompt's
  last token: the key set. With `refine`, also each prompt's hidden state leaving block L (the
  last adapted block), computed with that adapter alone applied: the adapter's own features.
- **Routing** (each forward call, at block K's input): a row's score for an adapter is the best
  cosine similarity between any of the row's real (unpadded) positions and any of the adapter's
  keys; the row goes to the best-scoring adapter if that score reaches the threshold, else to
  none, which is what keeps locality. A row never sees another row and padding never enters a
  score, so a batch routes as its rows do one at a time.
- **Self-refinement** (MOS's second step): at block L's output, a routed row is scored again,
  now with its features under the chosen adapter, against every adapter's own features; if
  another adapter matches better, block L's contribution is swapped to that adapter's (the same
  output up to float rounding when only block L is adapted: its MLP output enters the residual
  unchanged, probed when the edit runs; with several adapted blocks the earlier ones keep the first
  choice). Every adapter of a refined set must adapt block L's MLP output.
- **Threshold.** Given, or calibrated without any data the edits are measured on: every
  adapter's prompts with the subject's letters shuffled (a same-shaped person the model never
  saw), each followed by its target, scored like any input; the threshold is set so that a share
  `quantile` of them reads no adapter (0.99: about one such near-miss in a hundred is routed; with
  two stages each stage lets through half of that, `_calibrate`).
- **Cached decoding.** The decision is made on the first call of a generation (the prompt) and
  kept on the cache object for the tokens that follow, so a continuation reads one adapter.

Each retrieval edit pushes a `Router` on the model's LoRA store (state: keys, owners, the
threshold — all in the state dict, so `weights_hash` sees retrieval switched on or off);
reverting pops it, so switching retrieval on or off, or changing its adapter set, reverts
exactly. While one is in force its adapters act only through routing, whatever their
`enabled` flags; `enabled=false` pushes a router that routes nothing (the flags rule again).

Example:
    >>> wb.edit("lora", batch0, {"name": "a0", "layers": "3"})              # doctest: +SKIP
    >>> wb.edit("lora", batch1, {"name": "a1", "layers": "3"})              # doctest: +SKIP
    >>> wb.edit("lora-retrieve", batch0 + batch1, {"adapters": "a0,a1"})     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from editors.common.text import scramble
from workbench.core.errors import InputError
from workbench.core.patch import Attachment, Patch, register_attachment
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_number)
from workbench.editing.registry import register_editor
from workbench.eval.scoring import answer_rows, pad_id, right_pad

from .store import LoRAStore, adapter_list, adapter_names, find_store, lora_adapter

CACHE_ATTR = "_wb_lora_route"  # where a generation's cache keeps its rows' choice
NONE = -1
BATCH = 32


def row_scores(h: torch.Tensor, mask: torch.Tensor | None, keys: torch.Tensor, owner: torch.Tensor,
               n: int) -> torch.Tensor:
    """(batch, n) each row's best cosine similarity to each adapter's keys.

    h (batch, seq, d) hidden states; mask (batch, seq) 1 for real tokens (None: all real);
    keys (k, d) unit rows; owner (k,) the adapter index of each key.

    Example:
        >>> keys = torch.eye(2); owner = torch.tensor([0, 1])
        >>> row_scores(torch.tensor([[[1., 0.], [0., 3.]]]), torch.tensor([[1, 0]]), keys, owner, 2)
        tensor([[1., 0.]])
    """
    sims = F.normalize(h.float(), dim=-1) @ keys.T.to(h.device)  # (batch, seq, k)
    if mask is not None:
        sims.masked_fill_(mask[:, :, None].to(sims.device) == 0, -2.0)
    per_key = sims.amax(1)  # (batch, k)
    out = per_key.new_full((h.shape[0], n), -2.0)
    return out.scatter_reduce(1, owner.to(h.device).expand(h.shape[0], -1), per_key, "amax")


class Router(nn.Module):
    """One retrieval edit on the store's stack: keys (k, d) at block `key_layer`'s input, their
    owners (k,), the own-feature keys (k, d) at block `refine_layer`'s output (empty without
    refinement) and the threshold. `on=False`: a router that routes nothing."""

    def __init__(self, names: list[str], key_layer: int, refine_layer: int | None, on: bool = True,
                 keys: torch.Tensor | None = None, owner: torch.Tensor | None = None,
                 own_keys: torch.Tensor | None = None, threshold: float = 1.0,
                 late_keys: torch.Tensor | None = None, late_threshold: float = 1.0):
        super().__init__()
        self.names, self.on = list(names), bool(on)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.key_layer, self.refine_layer = key_layer, refine_layer
        self.register_buffer("keys", keys if keys is not None else torch.zeros(0, 0))
        self.register_buffer("owner", owner if owner is not None else torch.zeros(0, dtype=torch.long))
        self.register_buffer("own_keys", own_keys if own_keys is not None else torch.zeros(0, 0))
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("late_keys", late_keys if late_keys is not None else torch.zeros(0, 0))
        self.register_buffer("late_threshold", torch.tensor(float(late_threshold)))
        self.force: int | None = None       # while keys are computed: every row reads adapter `force`
        self.record: list | None = None     # while calibrating: each row's best first-stage score
        self.record_late: list | None = None  # ... and its best score against the late keys
        self.trace: list | None = None      # when a list: each fresh call's rows' (first, final) choices
        self._handles: list = []
        self.__dict__["_store"] = None  # the LoRAStore this router is on (set by install)
        self._refine_targets: set[str] = set()
        self._reset()

    def _reset(self):
        self._mask, self._cache, self._fresh, self._choice, self._first, self._x = None, None, True, None, None, {}

    # -- hooks -------------------------------------------------------------------------
    def install(self, model, adapter, store: LoRAStore) -> None:
        self.__dict__["_store"] = store  # not a submodule: the store holds this router
        if not self.on:
            return
        if self.refine_layer is not None:
            self._refine_targets = {adapter.module_name(adapter.mlp_out(self.refine_layer))}
        self._handles = [model.register_forward_pre_hook(self._see_inputs, with_kwargs=True),
                         model.register_forward_hook(self._done),
                         adapter.layer(self.key_layer).register_forward_pre_hook(self._route, with_kwargs=True)]
        if self.refine_layer is not None:
            self._handles.append(adapter.layer(self.refine_layer).register_forward_hook(self._refine))

    def uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _active(self) -> bool:
        return self._store is not None and self._store.retrieval is self

    def _see_inputs(self, _model, args, kwargs):
        self._reset()
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = kwargs.get("past_key_values")
        if cache is not None and hasattr(cache, "get_seq_length"):
            past = cache.get_seq_length()
        elif isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            past = cache[0][0].shape[-2]  # legacy ((key, value), ...) per layer: key (batch, heads, past, dim)
        else:
            past = 0
        self._cache, self._fresh = cache, int(past) == 0

    def _row_mask(self, h: torch.Tensor) -> torch.Tensor | None:
        """(batch, seq) of the call's real tokens; cached decoding passes past + new, the new are last."""
        m = self._mask
        if m is None or m.shape[0] != h.shape[0] or m.shape[1] < h.shape[1]:
            return None
        return m[:, -h.shape[1]:]

    def _route(self, _block, args, kwargs):
        if not self._active():
            return None
        h = args[0] if args else kwargs["hidden_states"]  # (batch, seq, d)

        def every(i):
            return torch.full((h.shape[0],), i, dtype=torch.long, device=h.device)
        if self.force is not None:
            self._choice = every(self.force)
            return None
        kept = getattr(self._cache, CACHE_ATTR, None) if not self._fresh else None
        if kept is not None and kept[0] == id(self) and kept[1].shape[0] == h.shape[0]:
            self._choice = kept[1].to(h.device)  # a continuation reads what its prompt chose
            return None
        if not self.keys.numel() or self.post_hoc:
            # keys still being computed, or the choice is made on block L's output: nothing before it
            self._choice = every(NONE)
            return None
        scores = row_scores(h, self._row_mask(h), self.keys, self.owner, len(self.names))  # (batch, n)
        best, which = scores.max(1)
        if self.record is not None:
            self.record.append(best.detach().cpu())
            which = torch.full_like(which, NONE)
        self._choice = torch.where(best >= self.threshold.to(best.device), which, torch.full_like(which, NONE))
        self._first = self._choice
        self._keep()
        return None

    def _done(self, _model, _args, _out):
        if self.trace is not None and self._fresh and self._first is not None:
            def name(i):
                return None if i < 0 else self.names[i]
            self.trace.append([(name(int(a)), name(int(b))) for a, b in zip(self._first.cpu(), self._choice.cpu())])
        self._cache, self._x = None, {}  # hold neither the KV cache nor activations past the call

    # -- the routing protocol `workbench.eval.routing` reads (no editor is imported there) --
    def in_force(self) -> bool:
        return self._active()

    @contextlib.contextmanager
    def tracing(self):
        """Within: every fresh forward call appends its rows' (first, final) choices (names or None)."""
        self.trace = []
        try:
            yield self.trace
        finally:
            self.trace = None

    def _keep(self):
        if self._cache is not None:
            try:
                setattr(self._cache, CACHE_ATTR, (id(self), self._choice))  # another router ignores it
            except AttributeError:  # a legacy tuple cache: each call decides on its own tokens
                pass

    def add_routed(self, ad_name: str, ad, target: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` plus adapter `ad_name`'s update on the rows routed to it."""
        if target in self._refine_targets:
            self._x[target] = x
        if self._choice is None:
            return out
        rows = (self._choice == self.index[ad_name]).to(x.device)  # (batch,) on this block's device
        if x.shape[0] != rows.shape[0]:  # tokens flattened to (batch*seq, in) (OPT)
            rows = rows.repeat_interleave(x.shape[0] // rows.shape[0])
        sel = rows.nonzero().squeeze(1)
        if not len(sel):
            return out
        return out.index_add(0, sel, ad.delta(target, x[sel]).to(out.dtype))

    @property
    def post_hoc(self) -> bool:
        """Refining with one adapted block: the choice is made once on block L's output (where edits
        are told apart best) and the chosen adapter's update added there, so one scoring serves."""
        return self.refine_layer is not None and self.refine_layer == self.key_layer

    def _refine(self, _block, _args, output):
        if not self._active() or not self._fresh or self.force is not None or self._choice is None:
            return None
        h = output[0] if isinstance(output, tuple) else output  # (batch, seq, d)
        mask = self._row_mask(h)
        choice, n = self._choice.to(h.device), len(self.names)

        def scores(hs, rows, keys):  # (r, n) the rows' best similarity to each adapter's keys
            return row_scores(hs[rows], None if mask is None else mask[rows], keys, self.owner, n)
        new = choice.clone()
        idle = (choice < 0).nonzero().squeeze(1)
        if len(idle) and self.late_keys.numel():
            # rows no adapter took at block K, scored on block L's output (no adapter acted there):
            # later features tell edits apart better; a second threshold still guards locality
            best, which = scores(h, idle, self.late_keys).max(1)
            if self.record_late is not None:
                self.record_late.append(best.detach().cpu())
                return None
            new[idle] = torch.where(best >= self.late_threshold.to(best.device), which, torch.full_like(which, NONE))
            h = self._swap(h, choice, new)
            if self.post_hoc:
                self._first = new.clone()
        routed = (new >= 0).nonzero().squeeze(1)
        final = new.clone()
        if len(routed):  # MOS: re-score with the chosen adapter's own features, keep the best match
            final[routed] = scores(h, routed, self.own_keys).argmax(1)
            h = self._swap(h, new, final)
        self._choice = final
        self._keep()
        if torch.equal(final, choice):
            return None
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def _swap(self, h: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """h (batch, seq, d) with block L's update of the rows whose choice moved from `old` to `new`
        (adapter indices, -1 = none) taken from the old adapter and given to the new one."""
        rows = (new != old).nonzero().squeeze(1)
        if not len(rows):
            return h
        old, new = old[rows], new[rows]
        corr = torch.zeros_like(h[rows], dtype=torch.float32)  # (m, seq, d)
        adapters = self._store.adapters
        for target in self._refine_targets:
            x = self._x.get(target)
            if x is None:
                continue
            x = x.reshape(h.shape[0], h.shape[1], -1)[rows]  # (m, seq, in)
            for sign, chosen in ((-1.0, old), (1.0, new)):
                for a in [a for a in chosen.unique().tolist() if a >= 0]:
                    ad = adapters[self.names[a]]
                    if target in ad.targets:
                        pick = chosen == a
                        corr[pick] += sign * ad.delta(target, x[pick]).float()
        return h.index_add(0, rows, corr.to(h.dtype))

    def config(self) -> dict:
        return {"names": self.names, "key_layer": self.key_layer, "refine_layer": self.refine_layer, "on": self.on}


def _store_for(model) -> LoRAStore:
    store = find_store(model)
    if store is None:
        raise InputError("the model has no LoRA adapters to retrieve", field="adapters")
    return store


@register_attachment
class LoRARetrieval(Attachment):
    """Pushes one `Router` on the store's retrieval stack; detaching pops it."""
    kind = "lora-retrieval"

    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        self._config, self._state = dict(config), dict(state)

    @classmethod
    def of(cls, router: Router) -> "LoRARetrieval":
        return cls({**router.config(), "threshold": float(router.threshold),
                    "late_threshold": float(router.late_threshold)},
                   {k: v.detach().clone() for k, v in router.state_dict().items() if "threshold" not in k})

    def build(self) -> Router:
        c, s = self._config, self._state
        return Router(c["names"], c["key_layer"], c["refine_layer"], c["on"], s.get("keys"), s.get("owner"),
                      s.get("own_keys"), c["threshold"], s.get("late_keys"), c.get("late_threshold", 1.0))

    def attach(self, model, adapter=None) -> None:
        from workbench.core.arch import get_adapter
        store = _store_for(model)
        for n in self._config["names"]:
            lora_adapter(model, n)  # every adapter it routes to is there
        router = self.build().to(next(model.parameters()).device)
        store.routers.append(router)
        router.install(model, adapter or get_adapter(model), store)

    def detach(self, model, adapter=None) -> None:
        store = find_store(model)
        if store is None or not len(store.routers):
            raise InputError("no adapter retrieval to remove", field="adapters")
        router = store.routers[-1]
        router.uninstall()
        del store.routers[len(store.routers) - 1]
        store.remove_if_empty(model)

    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def config(self) -> dict:
        return dict(self._config)

    def describe(self, model) -> dict | None:
        return {"retrieval": "on" if self._config["on"] else "off", "adapters": self._config["names"],
                "threshold": self._config["threshold"]}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "LoRARetrieval":
        return cls(config, state)


@dataclass
class RetrieveHParams(HParams):
    adapters: tuple[str, ...] = field(default=(), metadata={
        "help": "adapters to route among (default: every adapter that recorded its prompts)"})
    enabled: bool = field(default=True, metadata={"help": "true: retrieval on; false: off (the flags rule again)"})
    threshold: float | None = field(default=None, metadata={
        "help": "cosine similarity a row must reach to read an adapter, in [-1, 1] (default: calibrated)"})
    quantile: float = field(default=0.99, metadata={
        "help": "calibration: share of subject-shuffled prompts kept below the threshold, in (0, 1]"})
    refine: bool = field(default=True, metadata={
        "help": "re-score each routed row with the chosen adapter's own features (MOS's self-refinement)"})
    seed: int = field(default=0, metadata={"help": "seed of the subject shuffling"})

    def __post_init__(self):
        self.adapters = adapter_list(self.adapters)
        if self.threshold is not None:
            check_number(self.threshold, "threshold", "in [-1, 1]", lambda v: -1 <= v <= 1)
        check_number(self.quantile, "quantile", "in (0, 1]", lambda v: 0 < v <= 1)


def _layers_of(adapter, names: list[str]) -> dict[str, int]:
    """The block index of each target module name."""
    prefixes = [(adapter.module_name(adapter.layer(i)) + ".", i) for i in range(adapter.num_layers)]
    out = {}
    for n in names:
        hit = [i for p, i in prefixes if n.startswith(p)]
        if not hit:
            raise InputError(f"adapter target {n!r} is not inside a decoder block", field="adapters")
        out[n] = hit[0]
    return out


@register_editor
class LoRARetrieveEditor(Editor):
    """Route each input to the recorded LoRA adapter holding it, or none (MOS-style retrieval).

    The batch's requests are what the session measures before and after; the keys come from the
    prompts each adapter recorded when it was trained.
    """
    name = "lora-retrieve"
    capabilities = Capabilities(batch=True, sequential=True, single_revert=False, composes=True)
    hparams_class = RetrieveHParams

    def effective_hparams(self, ctx: EditContext, hp: RetrieveHParams) -> RetrieveHParams:
        """The adapter set: the ones named, else every adapter that recorded its prompts."""
        import dataclasses
        store = find_store(ctx.model)
        names = list(hp.adapters) or ([n for n in adapter_names(ctx.model) if store.prompts.get(n)] if store else [])
        return dataclasses.replace(hp, adapters=tuple(names))

    def run(self, ctx: EditContext, batch: Batch, hp: RetrieveHParams) -> Patch:
        model, adapter = ctx.model, ctx.adapter
        store = _store_for(model)
        names = list(hp.adapters)
        if not hp.enabled:
            att = LoRARetrieval({"names": [], "key_layer": 0, "refine_layer": None, "on": False,
                                 "threshold": 1.0}, {})
            att.attach(model, adapter)
            return Patch([], [att], {"retrieval": "off"})
        if not names:
            raise InputError("no adapter to route to: train adapters with `lora` first (each records its "
                             "prompts)", field="adapters")
        for n in names:
            lora_adapter(model, n)
            if not store.prompts.get(n):
                raise InputError(f"adapter {n!r} recorded no training prompts (recorded before retrieval "
                                 "existed, or a merge of such); train it again to route to it", field="adapters")
        layers = {n: _layers_of(adapter, store.adapters[n].targets) for n in names}
        key_layer = min(i for ls in layers.values() for i in ls.values())
        if key_layer == 0:
            raise InputError("an adapter adapts block 0, so routing would have only the token embeddings to go "
                             "by; train the adapters on later layers (e.g. layers=3)", field="adapters")
        refine_layer = max(i for ls in layers.values() for i in ls.values()) if hp.refine else None
        if refine_layer is not None:
            _check_refinable(ctx, store, names, layers, refine_layer)
        router = Router(names, key_layer, refine_layer)
        store.routers.append(router)
        router.install(model, adapter, store)
        try:
            keys, owner, own, late = _keys(ctx, store, router, names, refine_layer)
            router.keys, router.owner = keys, owner
            if own is not None:
                router.own_keys, router.late_keys = own, late
            threshold, late_threshold, calib = _calibrate(ctx, store, router, names, hp)
            router.threshold.fill_(threshold)
            router.late_threshold.fill_(late_threshold)
        finally:
            router.uninstall()
            del store.routers[len(store.routers) - 1]
        att = LoRARetrieval.of(router)
        att.attach(model, adapter)
        ctx.on_error(lambda: att.detach(model, adapter))
        meta = {"adapters": names, "key_layer": key_layer, "refine_layer": refine_layer, "threshold": threshold,
                "late_threshold": late_threshold if refine_layer is not None else None, "keys": int(keys.shape[0])}
        if calib is not None:
            meta["calibration"] = calib
        return Patch([], [att], meta)


def _check_refinable(ctx, store, names, layers, refine_layer) -> None:
    """Refinement swaps block L's update between adapters after the block: every target there must be
    the MLP output projection, and its output must reach the residual stream unchanged."""
    mlp_out = ctx.adapter.module_name(ctx.adapter.mlp_out(refine_layer))
    for n in names:
        at_l = [t for t, i in layers[n].items() if i == refine_layer]
        if mlp_out not in at_l:  # a switch to it would take the old update away and add nothing
            raise InputError(f"refine swaps adapters at block {refine_layer}, the last adapted one; {n!r} does not "
                             f"adapt its MLP output; train every adapter of the set on it, or pass refine=false",
                             field="refine")
        if any(t != mlp_out for t in at_l):
            raise InputError(f"refine needs adapters on the MLP output only in block {refine_layer}; {n!r} also "
                             f"adapts {[t for t in at_l if t != mlp_out]}; pass refine=false", field="refine")
    from editors.common.kv import mlp_adds_to_residual_at
    ids = ctx.tokenizer(store.prompts[names[0]][0]["prompt"])["input_ids"]
    if not mlp_adds_to_residual_at(ctx.model, ctx.adapter, refine_layer, ids, len(ids) - 1, pad_id(ctx.tokenizer)):
        raise InputError(f"block {refine_layer}'s MLP output is normalised before it reaches the residual stream, "
                         "so an adapter's update cannot be swapped after the block; pass refine=false",
                         field="refine")


@torch.no_grad()
def _last_states(ctx, prompts: list[str], layer: int, output: bool) -> torch.Tensor:
    """(n, d) the hidden state entering (or, `output`, leaving) block `layer` at each prompt's last token."""
    tok, model, adapter = ctx.tokenizer, ctx.model, ctx.adapter
    seen = []

    def grab_in(_m, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    def grab_out(_m, _args, out):
        seen.append(out[0] if isinstance(out, tuple) else out)
    block = adapter.layer(layer)
    handle = block.register_forward_hook(grab_out) if output else \
        block.register_forward_pre_hook(grab_in, with_kwargs=True)
    rows = []
    try:
        ids = tok(list(prompts))["input_ids"]
        device = next(model.parameters()).device
        for s in range(0, len(ids), BATCH):
            chunk = ids[s:s + BATCH]
            x, mask = right_pad(chunk, pad_id(tok))
            seen.clear()
            model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False)
            h = seen[0]  # (b, seq, d)
            last = torch.tensor([len(c) - 1 for c in chunk], device=h.device)
            rows.append(h[torch.arange(len(chunk), device=h.device), last].float())
    finally:
        handle.remove()
    return torch.cat(rows)


def _keys(ctx, store, router: Router, names: list[str], refine_layer):
    """Unit keys (k, d) at block K's input, owners (k,), and with refinement the unit keys (k, d) at
    block L's output computed with each adapter alone applied (own features) and with none (late)."""
    keys, owner, own, late = [], [], [], []
    for i, n in enumerate(names):
        prompts = [p["prompt"] for p in store.prompts[n]]
        router.force = None  # block K's input does not depend on the set's adapters
        keys.append(F.normalize(_last_states(ctx, prompts, router.key_layer, output=False), dim=-1))
        owner.append(torch.full((len(prompts),), i, dtype=torch.long))
        if refine_layer is not None:
            late.append(F.normalize(_last_states(ctx, prompts, refine_layer, output=True), dim=-1))
            router.force = i
            try:
                own.append(F.normalize(_last_states(ctx, prompts, refine_layer, output=True), dim=-1))
            finally:
                router.force = None
    device = router.threshold.device
    return (torch.cat(keys).to(device), torch.cat(owner).to(device),
            torch.cat(own).to(device) if own else None, torch.cat(late).to(device) if late else None)


@torch.no_grad()
def _calibrate(ctx, store, router: Router, names: list[str], hp: RetrieveHParams) -> tuple[float, float, dict | None]:
    """The two thresholds (block K's keys, block L's late keys): the given one for both, else from
    every recorded prompt with its subject's letters shuffled, followed by its target (rows shaped
    like the edits, about no one the model knows). With one stage (no refinement, or post hoc) its
    threshold is the `quantile` of their best scores; with two, each stage keeps half of what is left
    over (the first stage's quantile 1 − (1 − q)/2 of all, the late stage's the same of the rows the
    first left), so about 1 − q of them are routed in all."""
    if hp.threshold is not None:
        return hp.threshold, hp.threshold, None
    rng = random.Random(hp.seed)
    rows = [(p["prompt"].replace(p["subject"], scramble(p["subject"], rng)), p["target"])
            for n in names for p in store.prompts[n] if p.get("subject") and p["subject"] in p["prompt"]]
    if not rows:
        raise InputError("no recorded prompt names its subject, so no threshold can be calibrated; give one "
                         "(threshold=0.95, say)", field="threshold")
    device = next(ctx.model.parameters()).device
    router.record, router.record_late = [], []
    try:
        for x, mask in answer_rows(ctx.tokenizer, [r[0] for r in rows], [r[1] for r in rows], BATCH):
            ctx.model(input_ids=x.to(device), attention_mask=mask.to(device), use_cache=False)
        first = torch.cat(router.record).double() if router.record else None
        late = torch.cat(router.record_late).double() if router.record_late else None
    finally:
        router.record = router.record_late = None

    def quantile(v, q):
        return min(float(torch.quantile(v, q)), 1.0)
    calib = {"negatives": len(rows), "quantile": hp.quantile}
    if first is None or late is None:  # one stage: block K's keys alone, or post hoc on block L's
        thr = quantile(first if first is not None else late, hp.quantile)
        return thr, thr, calib
    q = 1 - (1 - hp.quantile) / 2
    thr = quantile(first, q)
    left = late[first < thr]
    return thr, quantile(left, q) if len(left) else 1.0, calib
