"""`lora`: one peft LoRA adapter trained per edit batch, recorded as an attachment.

The adapter is trained with peft itself: `peft.inject_adapter_in_model` wraps the target
modules (chosen through the architecture adapter: the MLP output projections of the chosen
layers by default), only the LoRA factors are trained (Adam on the target tokens'
cross-entropy, the FT-M objective of `editors.ft`), and then the injection is undone — the
original modules go back in place, bit for bit, with their `requires_grad` flags. The trained
factors become a `LoRAAdd` attachment (see `store.py`): hooks apply them, the ledger records
them in peft's key format with the LoraConfig, reverting removes them exactly, and the
`merge` editor (`editors/lora/merge.py`) combines recorded adapters with peft's
`add_weighted_adapter`, and `lora-retrieve` (`editors/lora/retrieve.py`) routes each input to
the adapter that holds it, from the prompts each adapter records.

Every adapter trained after others is trained *on top of* them (they stay enabled during
training), as sequential edits are.

Example:
    >>> wb.edit("lora", requests, {"r": "8", "layers": "1,2"})           # doctest: +SKIP
    >>> wb.edit("merge", requests, {"adapters": "lora0,lora1", "combination_type": "ties"})  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from editors.ft import chunks, fit, loss_stats
from workbench.core.errors import InputError
from workbench.core.offload import onload
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_choice,
                                        check_number, resolve_layers)
from workbench.editing.registry import register_editor
from workbench.eval.scoring import pad_id

from .store import LoRAAdd, adapter_list, adapter_names, lora_adapter, next_name

TARGETS = ("mlp_out", "mlp_in", "mlp", "attn_out")
TRAIN_NAME = "wb_training"  # the adapter's name inside peft while it trains


@dataclass
class LoRAHParams(HParams):
    name: str | None = field(default=None, metadata={"help": "adapter name (default: lora0, lora1, ...)"})
    r: int = field(default=8, metadata={"help": "LoRA rank (1..1024)"})
    alpha: float = field(default=16.0, metadata={"help": "lora_alpha: the update is scaled by alpha / r (> 0)"})
    targets: str = field(default="mlp_out", metadata={
        "help": "modules to adapt in each chosen layer: mlp_out, mlp_in, mlp (both) or attn_out",
        "choices": TARGETS})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "layers to adapt (default: all)"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate (> 0)"})
    steps: int = field(default=60, metadata={"help": "passes over the requests (1..10000)"})
    early_stop_loss: float = field(default=0.02, metadata={"help": "stop once the mean loss is below this (>= 0)"})
    batch_size: int = field(default=0, metadata={"help": "requests per optimizer step (0 = all)"})
    mos_momentum: float = field(default=0.0, metadata={
        "help": "MOS-style training: after every step the new adapter's factors move this share toward the "
                "mean of the earlier adapters' (MOS uses 0.1), so adapters trained apart stay compatible; "
                "0 = off; in [0, 1)"})
    mos_adapters: tuple[str, ...] | None = field(default=None, metadata={
        "help": "the earlier adapters it stays close to (default: every recorded adapter with the same "
                "targets and rank; used when mos_momentum > 0)"})

    def __post_init__(self):
        check_number(self.r, "r", "an integer in 1..1024", lambda v: 1 <= v <= 1024, integer=True)
        check_number(self.alpha, "alpha", "> 0", lambda v: v > 0)
        check_number(self.lr, "lr", "> 0", lambda v: v > 0)
        check_number(self.steps, "steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        check_number(self.early_stop_loss, "early_stop_loss", ">= 0", lambda v: v >= 0)
        check_number(self.batch_size, "batch_size", "an integer >= 0", lambda v: v >= 0, integer=True)
        check_number(self.mos_momentum, "mos_momentum", "in [0, 1)", lambda v: 0 <= v < 1)
        if self.mos_adapters is not None:
            self.mos_adapters = adapter_list(self.mos_adapters, "mos_adapters")
        check_choice(self.targets, "targets", TARGETS)
        if self.name is not None and (not self.name or "." in self.name or not self.name.isprintable()):
            raise InputError(f"must be a non-empty name without dots, got {self.name!r}", field="name")

    def derive(self, adapter) -> "LoRAHParams":
        return dataclasses.replace(self, layers=resolve_layers(adapter, self.layers))


def target_modules(adapter, targets: str, layers) -> list[str]:
    """Dotted module names the adapter wraps."""
    mods = []
    for i in layers:
        if targets in ("mlp_in", "mlp"):
            mods += adapter.mlp_in(i)
        if targets in ("mlp_out", "mlp"):
            mods.append(adapter.mlp_out(i))
        if targets == "attn_out":
            mods.append(adapter.attn_out(i))
    return [adapter.module_name(m) for m in mods]


def training_prompts(batch) -> list[dict]:
    """What an adapter records of its edits, for retrieval's keys (`retrieve.py`): each prompt, its
    subject (None when the request names none) and its new target."""
    return [{"prompt": r.prompt, "subject": getattr(r, "subject", None) or None, "target": r.target_new}
            for r in batch]


def config_json(cfg) -> dict:
    """The LoraConfig fields a peft adapter_config.json carries, JSON-safe."""
    return {"peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.lora_alpha,
            "target_modules": sorted(cfg.target_modules), "lora_dropout": cfg.lora_dropout, "bias": cfg.bias,
            "fan_in_fan_out": cfg.fan_in_fan_out, "use_rslora": cfg.use_rslora}


def lora_config(d: dict):
    from peft import LoraConfig
    return LoraConfig(**{k: v for k, v in d.items() if k != "peft_type"})


@register_editor
class LoRAEditor(Editor):
    """Train one peft LoRA adapter on a batch of edits; recorded as a removable attachment."""
    name = "lora"
    capabilities = Capabilities(batch=True, sequential=True, single_revert=False)
    hparams_class = LoRAHParams

    def effective_hparams(self, ctx: EditContext, hp: LoRAHParams) -> LoRAHParams:
        """The adapter's name: the one given, else the next free loraN; with MOS training, the earlier
        adapters it stays close to."""
        hp = dataclasses.replace(hp, name=hp.name or next_name(ctx.model))
        if hp.mos_momentum > 0 and hp.mos_adapters is None:
            names = target_modules(ctx.adapter, hp.targets, hp.layers)
            hp = dataclasses.replace(hp, mos_adapters=tuple(
                n for n in adapter_names(ctx.model)
                if lora_adapter(ctx.model, n).targets == sorted(names) and lora_adapter(ctx.model, n).rank == hp.r))
        return hp

    def run(self, ctx: EditContext, batch: Batch, hp: LoRAHParams) -> Patch:
        from peft import LoraConfig
        name = hp.name
        if name in adapter_names(ctx.model):
            raise InputError(f"a LoRA adapter named {name!r} already exists", field="name")
        names = target_modules(ctx.adapter, hp.targets, hp.layers)
        # fan_in_fan_out: GPT-2's Conv1D stores (in, out); peft must be told
        conv = ctx.adapter.orientation(ctx.model.get_submodule(names[0])) == "in_out"
        cfg = LoraConfig(r=hp.r, lora_alpha=hp.alpha, target_modules=names, lora_dropout=0.0, bias="none",
                         fan_in_fan_out=conv)
        factors, stats = _train_with_peft(ctx, cfg, names, chunks(batch, hp.batch_size), hp, _mos_mean(ctx, names, hp))
        att = LoRAAdd(name, config_json(cfg), factors, training_prompts(batch))
        att.attach(ctx.model, ctx.adapter)
        return Patch([], [att], {"adapter": name, **stats})


def _mos_mean(ctx: EditContext, names: list[str], hp: LoRAHParams) -> dict | None:
    """Per target: the mean A (r, in) and B (out, r) of the earlier adapters MOS training pulls toward
    (None when off or when there is no earlier adapter)."""
    if hp.mos_momentum == 0 or not hp.mos_adapters:
        return None
    sources = [lora_adapter(ctx.model, n) for n in hp.mos_adapters]  # unknown names fail here
    for n, src in zip(hp.mos_adapters, sources):
        if src.targets != sorted(names) or src.rank != hp.r:
            raise InputError(f"MOS training averages factors, so {n!r} must adapt the same modules with the same "
                             f"rank (it has rank {src.rank} on {len(src.targets)} module(s))", field="mos_adapters")
    return {t: (torch.stack([s.factors()[t][0] for s in sources]).mean(0),   # (r, in)
                torch.stack([s.factors()[t][1] for s in sources]).mean(0))   # (out, r)
            for t in names}


def _train_with_peft(ctx: EditContext, cfg, names: list[str], batches, hp: LoRAHParams, mos_mean=None):
    """Inject, train, read out the factors, un-inject. The model ends exactly as it began
    (the template puts back `requires_grad` flags and the training mode). With `mos_mean`, every
    step is followed by MOS's adapter merging: factors ← (1 − m)·factors + m·mean of the earlier ones."""
    from peft import inject_adapter_in_model
    model = ctx.model
    had_config = "peft_config" in vars(model)
    old_config = vars(model).get("peft_config")
    try:
        for n in names:  # peft puts an adapter on its base layer's device: a real one, not
            onload(model.get_submodule(n))  # the meta stand-in of an offloaded layer
        inject_adapter_in_model(cfg, model, adapter_name=TRAIN_NAME)  # kaiming init of A: the template's seeded RNG
        params = [p for n, p in model.named_parameters() if f".{TRAIN_NAME}." in n]
        opt = torch.optim.Adam(params, lr=hp.lr)
        after = None
        if mos_mean is not None:
            m = hp.mos_momentum

            @torch.no_grad()
            def after():
                for n in names:
                    layer = model.get_submodule(n)
                    for w, mean in ((layer.lora_A[TRAIN_NAME].weight, mos_mean[n][0]),
                                    (layer.lora_B[TRAIN_NAME].weight, mos_mean[n][1])):
                        w.mul_(1 - m).add_(mean.to(w.device, w.dtype), alpha=m)
        losses = fit(model, opt, batches, "target", pad_id(ctx.tokenizer), params[0].device, hp.steps,
                     hp.early_stop_loss, after_step=after)
        factors = {}
        for n in names:
            layer = model.get_submodule(n)
            factors[n] = (layer.lora_A[TRAIN_NAME].weight.detach().clone(),   # (r, in)
                          layer.lora_B[TRAIN_NAME].weight.detach().clone(),   # (out, r)
                          float(layer.scaling[TRAIN_NAME]))
    finally:
        _uninject(model, names)
        if had_config:
            model.peft_config = old_config
        elif "peft_config" in vars(model):
            del model.peft_config
    return factors, loss_stats(losses)


def _uninject(model, names: list[str]) -> None:
    """Put each wrapped module's original (base) layer back where peft's wrapper sits."""
    for n in names:
        mod = model.get_submodule(n)
        if hasattr(mod, "get_base_layer"):
            parent, _, attr = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, mod.get_base_layer())

