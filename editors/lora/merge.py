"""`merge`: combine recorded LoRA adapters with peft's `add_weighted_adapter`.

The chosen adapters' factors are loaded into a *shell* — a bare module tree with one
`nn.Linear` per targeted module path, wrapped by peft's `LoraModel` — and peft merges them
there (every combination type it offers: linear, cat, svd, ties, ties_svd, dare_ties,
dare_linear, dare_ties_svd, dare_linear_svd, magnitude_prune, magnitude_prune_svd). Merging
needs only the factors, so the live model is never wrapped and no other editor's patch is
disturbed. The result is recorded as a new adapter (`LoRAAdd`), and the sources are switched
off in the same patch (`LoRASwitch`), so the merged model is the merged adapter — not the
merge *plus* its sources — and reverting brings the sources back. With `fold`, the merged
update scaling · B A is added to the base weights instead, as a weight patch that reverts
exactly.

peft's sharp edges become errors before anything changes: a merged name that already exists
(peft silently returns), adapters of different ranks for a method that needs equal ranks
(linear, ties, dare_*, magnitude_prune — cat and the *_svd methods accept them), a density
outside (0, 1] or missing for a method that prunes, weights that do not match the selection,
unknown or repeated adapter names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.editing.contract import Batch, Capabilities, EditContext, Editor, HParams, check_choice
from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.registry import register_editor

from . import config_json, lora_config
from .store import LoRAAdd, LoRASwitch, adapter_list, adapter_names, find_store, lora_adapter, next_name

COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANKS = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")
NEEDS_DENSITY = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                 "magnitude_prune", "magnitude_prune_svd")


@dataclass
class MergeHParams(HParams):
    adapters: tuple[str, ...] = field(default=(), metadata={
        "help": "names of the recorded adapters to merge (default: every enabled adapter)"})
    combination_type: str = field(default="svd", metadata={"help": f"peft combination: {', '.join(COMBINATIONS)}",
                                                          "choices": COMBINATIONS})
    weights: tuple[float, ...] | None = field(default=None, metadata={
        "help": "one weight per adapter (default: 1 / number of adapters each)"})
    density: float | None = field(default=None, metadata={
        "help": "share of entries kept, in (0, 1]; required by ties, dare_* and magnitude_prune*",
        "applies_when": {"combination_type": NEEDS_DENSITY}})
    svd_rank: int | None = field(default=None, metadata={"help": "rank of an *_svd result (default: the largest)"})
    majority_sign_method: str = field(default="total", metadata={"help": "ties sign election: total or frequency",
                                                                "choices": SIGN_METHODS})
    name: str | None = field(default=None, metadata={"help": "name of the merged adapter (default: next loraN)"})
    fold: bool = field(default=False, metadata={"help": "add the merged update to the base weights instead"})
    seed: int = field(default=0, metadata={"help": "random seed of the dare_* drops"})

    def __post_init__(self):
        self.adapters = adapter_list(self.adapters)
        check_choice(self.combination_type, "combination_type", COMBINATIONS)
        if self.density is not None and not 0 < self.density <= 1:
            raise InputError(f"must be in (0, 1], got {self.density}", field="density")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise InputError(f"must be a positive integer, got {self.svd_rank}", field="svd_rank")
        check_choice(self.majority_sign_method, "majority_sign_method", SIGN_METHODS)

    def check_selection(self, names: list[str]) -> list[float]:
        """The weights for `names` (the resolved selection); errors for what peft would take silently."""
        if not names:
            raise InputError("no adapters to merge: the model has no enabled LoRA adapter", field="adapters")
        if self.weights is not None and len(self.weights) != len(names):
            raise InputError(f"{len(self.weights)} weight(s) for {len(names)} adapter(s) ({', '.join(names)})",
                             field="weights")
        if self.density is None and self.combination_type in NEEDS_DENSITY and len(names) > 1:
            raise InputError(f"combination_type {self.combination_type} prunes entries: give a density in (0, 1]",
                             field="density")
        return list(self.weights) if self.weights is not None else [1.0 / len(names)] * len(names)


@register_editor
class MergeEditor(Editor):
    """Merge recorded LoRA adapters with peft (linear, cat, svd, ties, dare, magnitude prune, ...).

    The batch's requests are what the session measures before and after; the merge does not read them.
    """
    name = "merge"
    capabilities = Capabilities(batch=True, sequential=True, single_revert=False, composes=True)
    hparams_class = MergeHParams

    def effective_hparams(self, ctx: EditContext, hp: MergeHParams) -> MergeHParams:
        """The adapters and weights that will be merged (by default every enabled adapter, equal
        weights) and the new adapter's name (by default the next free loraN)."""
        names = list(hp.adapters) or [n for n in adapter_names(ctx.model) if bool(lora_adapter(ctx.model, n).enabled)]
        weights = hp.check_selection(names)
        name = hp.name if hp.fold else (hp.name or next_name(ctx.model))  # a fold adds no adapter
        return dataclasses.replace(hp, adapters=tuple(names), weights=tuple(weights), name=name)

    def run(self, ctx: EditContext, batch: Batch, hp: MergeHParams) -> Patch:
        model = ctx.model
        names, weights = list(hp.adapters), list(hp.weights)
        sources = [lora_adapter(model, n) for n in names]  # unknown names fail here
        new = hp.name or next_name(model)
        if new in adapter_names(model):
            raise InputError(f"an adapter named {new!r} already exists (peft would silently keep the old one)",
                             field="name")
        ranks = {n: a.rank for n, a in zip(names, sources)}
        if len(set(ranks.values())) > 1 and hp.combination_type in EQUAL_RANKS and len(sources) > 1:
            raise InputError(f"combination_type {hp.combination_type} needs adapters of equal rank, got {ranks}; "
                             f"cat and the *_svd methods accept different ranks", field="combination_type")
        store = find_store(model)
        factors, cfg = _peft_merge(sources, [store.configs[n] for n in names], names, weights, hp)
        switch = LoRASwitch(names, enabled=False)
        meta = {"adapter": None if hp.fold else new, "merged": names, "ranks": ranks,
                "merged_rank": int(next(iter(factors.values()))[0].shape[0])}
        if hp.fold:
            return _fold(ctx, factors, switch, meta)
        held = [store.prompts.get(n) for n in names]  # the merged adapter holds every source's edits
        att = LoRAAdd(new, cfg, factors, [p for ps in held for p in ps] if all(ps is not None for ps in held) else None)
        att.attach(model, ctx.adapter)
        ctx.on_error(lambda: att.detach(model, ctx.adapter))
        switch.attach(model, ctx.adapter)
        return Patch([], [att, switch], meta)


def _shell(sources) -> nn.Module:
    """A module tree with one bias-free nn.Linear per targeted path (weights unused by merging)."""
    root = nn.Module()
    for path in sorted({t for s in sources for t in s.targets}):
        a, b, _ = next(s.factors()[path] for s in sources if path in s.targets)
        node = root
        *parents, leaf = path.split(".")
        for p in parents:
            if not hasattr(node, p):
                node.add_module(p, nn.Module())
            node = getattr(node, p)
        node.add_module(leaf, nn.Linear(a.shape[1], b.shape[0], bias=False))
    return root


def _peft_merge(sources, configs: list[dict], names: list[str], weights: list[float], hp: MergeHParams):
    """peft's add_weighted_adapter on a shell holding the sources; returns the result's factors."""
    from peft.tuners.lora import LoraModel
    shell = _shell(sources)
    # The shell is plain nn.Linear, so fan_in_fan_out is off whatever the model's layers are:
    # A (r, in) and B (out, r) have the same shapes either way.
    cfgs = [lora_config({**c, "fan_in_fan_out": False}) for c in configs]
    tmp_new = "wb_merged"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp.seed)  # dare_* drops entries at random
        lm = LoraModel(shell, cfgs[0], names[0])
        for n, c in zip(names[1:], cfgs[1:]):
            lm.peft_config[n] = c
            lm.inject_adapter(shell, n)
        with torch.no_grad():
            for n, src in zip(names, sources):
                for path, (a, b, s) in src.factors().items():
                    layer = shell.get_submodule(path)
                    layer.lora_A[n].weight.copy_(a)  # (r, in)
                    layer.lora_B[n].weight.copy_(b)  # (out, r)
                    layer.scaling[n] = s
        lm.add_weighted_adapter(names, weights, tmp_new, combination_type=hp.combination_type,
                                svd_rank=hp.svd_rank, density=hp.density,
                                majority_sign_method=hp.majority_sign_method)
    factors = {}
    for path in sorted({t for s in sources for t in s.targets}):
        layer = shell.get_submodule(path)
        factors[path] = (layer.lora_A[tmp_new].weight.detach().clone(), layer.lora_B[tmp_new].weight.detach().clone(),
                         float(layer.scaling[tmp_new]))
    cfg = config_json(lm.peft_config[tmp_new])
    cfg["fan_in_fan_out"] = configs[0].get("fan_in_fan_out", False)
    return factors, cfg


def _fold(ctx: EditContext, factors, switch: LoRASwitch, meta: dict) -> Patch:
    """Add scaling · B A to each target's weight (recorded), and switch the sources off."""
    names = [f"{path}.weight" for path in factors]
    rec = ctx.recorder(names)
    with torch.no_grad():
        for path, (a, b, s) in factors.items():
            mod = ctx.model.get_submodule(path)
            w = ctx.adapter.weight(mod)  # (out, in) view
            w.add_((s * (b.double() @ a.double())).to(w.dtype))  # (out, r) @ (r, in)
    switch.attach(ctx.model, ctx.adapter)
    patch = rec.patch(meta=meta)
    patch.attachments.append(switch)
    return patch
