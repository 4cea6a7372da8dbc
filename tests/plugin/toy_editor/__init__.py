"""A third-party editor in one folder, as a package outside the workbench would ship it: it
subclasses the template and writes only its method. `tests/test_plugin_editor.py` declares
its `workbench.editors` entry point and drives it through the CLI, the session, a bundle
replay and the UI's Edit page — touching nothing in `workbench/` or `ui/`.

It scales one MLP output projection (a real, exactly revertible weight change).
"""
import dataclasses
from dataclasses import dataclass, field

import torch

from workbench.core.patch import Patch
from workbench.editing.contract import Capabilities, Editor, HParams, check_number, resolve_layer
from workbench.editing.registry import register_editor


@dataclass
class ToyHParams(HParams):
    factor: float = field(default=1.5, metadata={"help": "multiplies the weight (> 0)"})
    layer: int | None = field(default=None, metadata={"help": "block to scale; default: the middle one"})

    def __post_init__(self):
        check_number(self.factor, "factor", "> 0", lambda v: v > 0)

    def derive(self, adapter):
        return dataclasses.replace(self, layer=resolve_layer(adapter, self.layer, depth=0.5))


@register_editor
class ToyScaleEditor(Editor):
    """Scale one MLP output projection (a test plugin)."""
    name = "toy-scale"
    capabilities = Capabilities(batch=True, sequential=True)
    hparams_class = ToyHParams

    def run(self, ctx, batch, hp: ToyHParams) -> Patch:
        module = ctx.adapter.mlp_out(hp.layer)
        name = ctx.adapter.param_name(module)
        rec = ctx.recorder([name])
        with torch.no_grad():
            ctx.adapter.weight(module).mul_(hp.factor)
        return rec.patch(meta={"param": name, "requests": len(batch)})
