"""A module an editor adds beside one MLP output projection (WISE's side memory, MEMOIR's residual
memory), and the attachment kind that puts it on a model and takes it off.

`SideModule` owns the hooks: a forward pre-hook on the model keeps what the MLP never sees (the
attention mask, the token ids, and the (batch, seq) shape that OPT's flattened MLP loses) as
`self.seen = (lead, mask, ids)`, and a forward hook on the projection calls the subclass's
`_route(module, args, output)`. All of a subclass's state lives in buffers, so an edit after the
first is a plain list of `WeightChange`s on them.

`SideModuleAttachment` is the first edit's patch: the module's config and buffers, rebuilt by the
subclass's `build()` and installed under the class's `attr` name.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from workbench.core.patch import Attachment


class SideModule(nn.Module):
    """Base of a module hooked beside layer `self.layer`'s MLP output projection, named `attr`
    on the model (its state_dict keys are "<attr>.*")."""
    attr: ClassVar[str] = ""
    label: ClassVar[str] = ""  # for people: "WISE memory"

    def __init__(self, layer: int):
        super().__init__()
        self.layer = int(layer)
        self._handles: list = []
        self.seen = None  # ((batch, seq) | None, attention mask (batch, seq) | None, input ids | None)

    def install(self, model, adapter) -> None:
        """Put the module on `model` and hook the layer's MLP output projection."""
        model.add_module(self.attr, self)
        self._handles = [model.register_forward_pre_hook(self._see_inputs, with_kwargs=True),
                         adapter.mlp_out(self.layer).register_forward_hook(self._route)]

    def uninstall(self, model) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(model, self.attr, None) is self:
            delattr(model, self.attr)

    def _route(self, module, args, output):
        raise NotImplementedError

    def _see_inputs(self, _model, args, kwargs):
        x = args[0] if args else kwargs.get("input_ids")
        ids = x if isinstance(x, torch.Tensor) and not x.is_floating_point() else None
        if x is None:
            x = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        lead = tuple(x.shape[:2]) if x is not None else None
        if mask is not None and (mask.dim() != 2 or lead is None or mask.shape[0] != lead[0]):
            mask = None  # a 4-D or otherwise prepared mask: treat every position as real
        self.seen = (lead, mask, ids)
        return None

    def keys_of(self, a: torch.Tensor) -> torch.Tensor:
        """The projection's input as (batch, seq, in), whether or not the MLP flattened it."""
        if a.dim() == 2:
            lead = self.seen[0] if self.seen and self.seen[0] else (1, a.shape[0])
            a = a.reshape(*lead, a.shape[-1])
        return a


class SideModuleAttachment(Attachment):
    """The first edit of a side-module editor: attaches the module (config + buffers). Subclasses
    set `kind` and `module_class` and implement `build()`."""
    module_class: ClassVar[type[SideModule]]

    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        self._config = dict(config)
        self._state = {k: v.detach().clone() for k, v in state.items()}

    @classmethod
    def of(cls, module: SideModule) -> "SideModuleAttachment":
        return cls(module.config(), module.state_dict())

    def build(self) -> SideModule:
        raise NotImplementedError

    def _load_buffers(self, module: SideModule) -> SideModule:
        for k, v in self._state.items():  # buffers may have been resized (tables that grow)
            module.register_buffer(k, v.detach().clone())
        return module

    def attach(self, model, adapter) -> None:
        name = self.module_class.attr
        if getattr(model, name, None) is not None:
            raise ValueError(f"the model already has a {self.module_class.label} attached")
        from workbench.core.arch import get_adapter
        module = self.build()
        module.to(next(model.parameters()).device)
        module.install(model, adapter or get_adapter(model))

    def detach(self, model, adapter) -> None:
        module = getattr(model, self.module_class.attr, None)
        if isinstance(module, self.module_class):
            module.uninstall(model)

    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def config(self) -> dict:
        return dict(self._config)

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor]) -> "SideModuleAttachment":
        return cls(config, state)
