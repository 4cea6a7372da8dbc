"""`lora-switch`: turn recorded LoRA adapters on or off, as a recorded, revertible edit.

Removing an adapter is reverting the edit that added it; switching keeps it in the model
(and in the ledger) but stops (or restarts) its hooks from adding its update.

Example:
    >>> wb.edit("lora-switch", requests, {"adapters": "lora0", "enabled": "false"})  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

from workbench.editing.contract import Batch, Capabilities, EditContext, Editor, HParams
from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.registry import register_editor

from .store import LoRASwitch, adapter_list, lora_adapter


@dataclass
class SwitchHParams(HParams):
    adapters: tuple[str, ...] = field(default=(), metadata={"help": "names of the adapters to switch"})
    enabled: bool = field(default=False, metadata={"help": "true: switch on; false: switch off"})

    def __post_init__(self):
        self.adapters = adapter_list(self.adapters)


@register_editor
class LoRASwitchEditor(Editor):
    """Switch recorded LoRA adapters on or off (recorded; revert restores their previous state).

    The batch's requests are what the session measures before and after; the switch does not read them.
    """
    name = "lora-switch"
    capabilities = Capabilities(batch=True, sequential=True, single_revert=False, composes=True)
    hparams_class = SwitchHParams

    def run(self, ctx: EditContext, batch: Batch, hp: SwitchHParams) -> Patch:
        if not hp.adapters:
            raise InputError("name the adapters to switch", field="adapters")
        for n in hp.adapters:
            if bool(lora_adapter(ctx.model, n).enabled) == hp.enabled:
                raise InputError(f"adapter {n!r} is already {'on' if hp.enabled else 'off'}", field="adapters")
        att = LoRASwitch(list(hp.adapters), hp.enabled)
        att.attach(ctx.model, ctx.adapter)
        return Patch([], [att], {})
