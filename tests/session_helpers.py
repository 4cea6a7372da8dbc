"""Test-only editors for the session tests: fast, deterministic weight and attachment edits."""
from dataclasses import dataclass, field

import torch

from workbench.editing.contract import Capabilities, Editor, HParams
from workbench.core.errors import InputError
from workbench.core.patch import Attachment, Patch, register_attachment
from workbench.editing.registry import register_editor
from workbench.core.paths import REPO
from workbench.eval.requests import load_requests

EDITS = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:40]  # the session tests' edits


@dataclass
class BumpHParams(HParams):
    layer: int = field(default=None, metadata={"help": "layer whose MLP out-projection rows are bumped"})
    scale: float = field(default=0.05, metadata={"help": "size of the bump, > 0"})

    def __post_init__(self):
        if self.scale is not None and not self.scale > 0:
            raise InputError(f"must be > 0, got {self.scale}", field="scale")

    def derive(self, adapter):
        if self.layer is None:
            return BumpHParams(layer=adapter.default_layer(), scale=self.scale)
        adapter.layer_index(self.layer)
        return self


@register_editor
class BumpEditor(Editor):
    """Adds a deterministic, request-dependent bump to a few rows of one MLP out-projection."""
    name = "test-bump"
    capabilities = Capabilities(batch=True, sequential=True, single_revert=True)
    hparams_class = BumpHParams

    def run(self, ctx, batch, hp):
        module = ctx.adapter.mlp_out(hp.layer)
        name = ctx.adapter.param_name(module)
        rec = ctx.recorder([name])
        seed = sum(ord(c) for r in batch for c in r.prompt + r.target_new) + ctx.seed
        g = torch.Generator().manual_seed(seed)
        w = ctx.adapter.weight(module)  # (hidden, d_ff)
        rows = torch.randperm(w.shape[0], generator=g)[:4]
        with torch.no_grad():
            w[rows] += hp.scale * torch.randn(4, w.shape[1], generator=g)
        return rec.patch(meta={"rows": rows.tolist()})


class _Shift(torch.nn.Module):
    def __init__(self, inner, delta):
        super().__init__()
        self.inner, self.delta = inner, torch.nn.Parameter(delta, requires_grad=False)

    def forward(self, x):
        return self.inner(x) + self.delta


@register_attachment
class ShiftAttachment(Attachment):
    """Wraps the final norm so its output is shifted: a module added to the model."""
    kind = "test-shift"

    def __init__(self, delta):
        self.delta = delta

    def attach(self, model, adapter):
        model.model.norm = _Shift(model.model.norm, self.delta.clone())

    def detach(self, model, adapter):
        model.model.norm = model.model.norm.inner

    def state(self):
        return {"delta": self.delta}

    def config(self):
        return {}

    @classmethod
    def from_saved(cls, config, state):
        return cls(state["delta"])


@dataclass
class NoHParams(HParams):
    pass


@register_editor
class ShiftEditor(Editor):
    """Adds a ShiftAttachment (tests export refusal and attachment rollback)."""
    name = "test-shift"
    capabilities = Capabilities(batch=True, sequential=True)
    hparams_class = NoHParams

    def run(self, ctx, batch, hp):
        att = ShiftAttachment(torch.full((ctx.model.config.hidden_size,), 0.01))
        att.attach(ctx.model, ctx.adapter)
        return Patch([], [att], {})


@register_editor
class OneAtATimeEditor(BumpEditor):
    """test-bump without the batch capability: one request per edit, like ROME."""
    name = "test-one"
    capabilities = Capabilities(batch=False, sequential=True, single_revert=True)
