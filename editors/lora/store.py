"""Where recorded LoRA adapters live in a model, and the attachments that add and switch them.

A model carries its adapters in one child module, `model.workbench_lora` (a `LoRAStore`),
created with the first adapter and removed with the last, so the state dict of a model
without adapters is exactly the base model's. Each adapter is a `LoRAAdapter` holding, per
target module, peft's two factors as buffers — A (r, in) and B (out, r) — its scaling
(lora_alpha / r, or per module after a merge) and an `enabled` flag, all in the state
dict, so `weights_hash` sees every adapter and every switch.

The target modules themselves are never replaced (peft's injection would rename
`...down_proj.weight` to `...down_proj.base_layer.weight` and break other editors' patches):
a forward hook on each targeted module adds Σ_enabled scaling · B A x to its output, which is
what peft's `lora.Linear` computes without dropout.

Adapter tensors are stored under peft's own keys ("<module>.lora_A.weight",
"<module>.lora_B.weight", as `get_peft_model_state_dict` writes them) with the LoraConfig as
JSON, so a patch file's adapter is a peft adapter. Each adapter also records the prompts it was
trained on (with their subjects), which adapter retrieval (`retrieve.py`) reads its keys from.

While a retrieval is in force (`store.retrieval`, the top of a stack of `Router`s that
`lora-retrieve` edits push and their reverts pop), the adapters it names are applied only to the
rows routed to them, whatever their `enabled` flags; the other adapters keep their flags.
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.core.errors import InputError
from workbench.core.patch import Attachment, register_attachment

STORE = "workbench_lora"


def _key(module_name: str) -> str:
    # ModuleDict keys may not contain dots
    return module_name.replace(".", "__")


def peft_keys(module_name: str) -> tuple[str, str]:
    return f"{module_name}.lora_A.weight", f"{module_name}.lora_B.weight"


class LoRAAdapter(nn.Module):
    """One adapter: per target module A (r, in), B (out, r) and scaling; one `enabled` flag."""

    def __init__(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]], enabled: bool = True):
        super().__init__()
        self.targets = sorted(factors)
        self.parts = nn.ModuleDict()
        for name in self.targets:
            a, b, s = factors[name]
            part = nn.Module()
            part.register_buffer("lora_A", a.detach().clone())  # (r, in)
            part.register_buffer("lora_B", b.detach().clone())  # (out, r)
            part.register_buffer("scaling", torch.tensor(float(s), dtype=torch.float32))
            self.parts[_key(name)] = part
        self.register_buffer("enabled", torch.tensor(bool(enabled)))

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """scaling · B A x for target `name`: x (..., in) -> (..., out)."""
        p = self.parts[_key(name)]
        a, b = p.lora_A.to(x.dtype), p.lora_B.to(x.dtype)
        return (x @ a.T) @ b.T * p.scaling.to(x.dtype)  # (..., r) -> (..., out)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {n: (self.parts[_key(n)].lora_A, self.parts[_key(n)].lora_B, float(self.parts[_key(n)].scaling))
                for n in self.targets}

    @property
    def rank(self) -> int:
        return int(self.parts[_key(self.targets[0])].lora_A.shape[0])


class LoRAStore(nn.Module):
    """The model's adapters (creation order) and the hooks that apply them."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.configs: dict[str, dict] = {}  # adapter name -> LoraConfig as JSON
        self.prompts: dict[str, list | None] = {}  # adapter name -> [{prompt, subject, target}, ...]
        self.routers = nn.ModuleList()  # retrieval stack: the last one is in force
        self._handles: dict[str, object] = {}

    @property
    def retrieval(self):
        """The `Router` in force, or None (no retrieval, or the last retrieval edit switched it off)."""
        top = self.routers[-1] if len(self.routers) else None
        return top if top is not None and top.on else None

    def sync_hooks(self, model: nn.Module) -> None:
        """One hook per module some adapter targets; none elsewhere."""
        wanted = {t for ad in self.adapters.values() for t in ad.targets}
        for name in set(self._handles) - wanted:
            self._handles.pop(name).remove()
        for name in sorted(wanted - set(self._handles)):
            self._handles[name] = model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def add_adapters(_mod, args, out):
            x = args[0]  # (..., in)
            router = self.retrieval
            for ad_name, ad in self.adapters.items():
                if name not in ad.targets:
                    continue
                if router is not None and ad_name in router.names:
                    out = router.add_routed(ad_name, ad, name, x, out)
                elif bool(ad.enabled):
                    out = out + ad.delta(name, x).to(out.dtype)
            return out
        return add_adapters

    def remove_if_empty(self, model) -> None:
        """With no adapter and no retrieval left, take the store and its hooks off the model, so its
        state dict is the base model's again."""
        if not len(self.adapters) and not len(self.routers):
            self.remove_hooks()
            delattr(model, STORE)

    def remove_hooks(self) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles = {}


def adapter_list(value, field: str = "adapters") -> tuple[str, ...]:
    """Adapter names from a hyper-parameter: a comma-separated string or a sequence, stripped,
    blanks dropped; a name given twice is refused.

    Example:
        >>> adapter_list("lora0, lora1,")
        ('lora0', 'lora1')
    """
    names = tuple(a.strip() for a in (value.split(",") if isinstance(value, str) else value) if a.strip())
    if len(set(names)) != len(names):
        raise InputError(f"an adapter is named twice: {list(names)}", field=field)
    return names


def find_store(model) -> LoRAStore | None:
    return getattr(model, STORE, None)


def adapter_names(model) -> list[str]:
    store = find_store(model)
    return list(store.adapters.keys()) if store is not None else []


def lora_adapter(model, name: str) -> LoRAAdapter:
    store = find_store(model)
    if store is None or name not in store.adapters:
        have = ", ".join(adapter_names(model)) or "none"
        raise InputError(f"no LoRA adapter named {name!r} in the model (adapters: {have})", field="adapters")
    return store.adapters[name]


def next_name(model) -> str:
    taken = set(adapter_names(model))
    i = 0
    while f"lora{i}" in taken:
        i += 1
    return f"lora{i}"


@register_attachment
class LoRAAdd(Attachment):
    """Adds one named adapter (created enabled); detaching removes it."""
    kind = "lora"

    def __init__(self, name: str, lora_config: dict, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                 prompts: list | None = None):
        self.name, self.lora_config, self.factors = name, dict(lora_config), factors
        self.prompts = [dict(p) for p in prompts] if prompts is not None else None  # [{prompt, subject, target}]

    def attach(self, model, adapter=None) -> None:
        store = find_store(model)
        if store is not None and self.name in store.adapters:
            raise InputError(f"a LoRA adapter named {self.name!r} already exists", field="name")
        if store is None:
            store = LoRAStore()
            model.add_module(STORE, store)
        device = next(model.parameters()).device
        store.adapters[self.name] = LoRAAdapter(self.factors).to(device)
        store.configs[self.name] = self.lora_config
        store.prompts[self.name] = self.prompts
        store.sync_hooks(model)

    def detach(self, model, adapter=None) -> None:
        store = find_store(model)
        if store is None or self.name not in store.adapters:
            raise InputError(f"no LoRA adapter named {self.name!r} to remove", field="name")
        del store.adapters[self.name]
        store.configs.pop(self.name, None)
        store.prompts.pop(self.name, None)
        store.sync_hooks(model)
        store.remove_if_empty(model)

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, (a, b, _) in self.factors.items():
            ka, kb = peft_keys(name)
            out[ka], out[kb] = a, b
        return out

    def config(self) -> dict:
        return {"name": self.name, "lora_config": self.lora_config,
                "scaling": {n: s for n, (_, _, s) in self.factors.items()},
                **({"prompts": self.prompts} if self.prompts is not None else {})}

    def describe(self, model) -> dict | None:
        store = find_store(model)
        if store is None or self.name not in store.adapters:
            return None  # taken out since (an undo of a later merge does not remove it, a revert does)
        return {"adapter": self.name, "enabled": bool(store.adapters[self.name].enabled),
                "rank": store.adapters[self.name].rank, "retrievable": bool(self.prompts)}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "LoRAAdd":
        factors = {}
        for name, s in config["scaling"].items():
            ka, kb = peft_keys(name)
            factors[name] = (state[ka], state[kb], float(s))
        return cls(config["name"], config["lora_config"], factors, config.get("prompts"))


@register_attachment
class LoRASwitch(Attachment):
    """Sets adapters' `enabled` flags; detaching restores the flags they had before."""
    kind = "lora-switch"

    def __init__(self, names: list[str], enabled: bool, before: list[bool] | None = None):
        self.names, self.enabled, self.before = list(names), bool(enabled), before

    def attach(self, model, adapter=None) -> None:
        ads = [lora_adapter(model, n) for n in self.names]  # all checked before any flag moves
        self.before = [bool(a.enabled) for a in ads] if self.before is None else self.before
        for a in ads:
            a.enabled.fill_(self.enabled)

    def detach(self, model, adapter=None) -> None:
        for n, flag in zip(self.names, self.before):
            lora_adapter(model, n).enabled.fill_(flag)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def config(self) -> dict:
        return {"names": self.names, "enabled": self.enabled, "before": self.before}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "LoRASwitch":
        return cls(config["names"], config["enabled"], config["before"])
