"""`rome`: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"), following kmeng01/rome `rome/rome_main.py`, `compute_u.py`,
`compute_v.py`.

One fact, one layer, one rank-one update of that layer's MLP output projection W (hidden, d_ff):

1. key k* (`compute_u`): the MLP key at the subject's last token, averaged over the prompt
   placed after each context prefix (`editors.common.kv.CONTEXT_TEMPLATES`);
   u = C⁻¹ k* with C = E[k kᵀ] the keys' second moment on a generic corpus
   (`editors.common.kv_stats.second_moments`, cached on disk), so the update leaves W k almost
   unchanged for keys unlike k*;
2. value v* (`compute_v`): the MLP output at the subject token that makes the model predict
   the target, found by optimising a delta there (`editors.common.kv.compute_z`, site "mlp_out",
   KL on "{subject} is a", weight decay, norm clamp);
3. W ← W + r uᵀ with r = (v* − W k₀ − b) / (k₀ · u), k₀ the key of the bare prompt: then
   W' k₀ = v* exactly, and the change to any other key k is proportional to uᵀk.

All defaults are ROME's GPT-2 XL hyperparameters (20 Adam steps at lr 0.5 on the delta,
weight decay 0.5, clamp 4×, KL factor 0.0625), except: the layer is derived from depth
(≈30%: ROME used 17/47 in GPT-2 XL, 12/35 in GPT-2 L, 8/23 in GPT-2 M, 5/27 in GPT-J); the
statistics use up to `mom2_n_samples` documents of the bundled world (`editors.common.corpus`)
instead of 100 000 Wikipedia texts; the context prefixes are fixed instead of sampled (see `editors/common/kv.py`).

Editing is one fact per call (`batch=False`); ROME's own `apply_rome_to_model` also applies
several requests one after another, which is what the session does for sequential edits.

Example:
    >>> patch = ROMEEditor().edit(ctx, [EditRequest("Ada lives in", "Rome", subject="Ada")])  # doctest: +SKIP
    >>> patch.meta["layer"], [w.name for w in patch.weights]                  # doctest: +SKIP
    (1, ['model.layers.1.mlp.down_proj.weight'])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from editors.common import kv

from editors.common import kv_stats
from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_bool,
                                        check_layer_value, check_number, resolve_layer)
from workbench.editing.registry import register_editor
from workbench.eval.requests import EditRequest

ROME_DEPTH = 0.3  # share of the depth of ROME's edited layer (see the module docstring)


@dataclass
class ValueHParams(HParams):
    """Fields shared by ROME and MEMIT: the value optimisation and the key statistics."""
    v_num_grad_steps: int = field(default=20, metadata={"help": "Adam steps on the value delta (1..1000)"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate of the value delta (> 0)"})
    v_weight_decay: float = field(default=0.5, metadata={
        "help": "weight of |delta| / |original value|² in the loss (>= 0)"})
    kl_factor: float = field(default=0.0625, metadata={
        "help": "weight of the KL term on '{subject} is a' that keeps the subject's meaning (>= 0)"})
    clamp_norm_factor: float = field(default=4.0, metadata={
        "help": "|delta| is clamped to this times |original value| (> 0)"})
    mom2_n_samples: int = field(default=2000, metadata={
        "help": "corpus texts over whose tokens the key second moment E[k kᵀ] is taken (1..10^7)"})
    corpus: str | None = field(default=None, metadata={
        "help": "corpus file for the key statistics (JSONL of {\"text\": ...} lines, or .txt with one "
                "text a line); None = the bundled world's clean training text, no canaries "
                "(editors.common.corpus)"})

    def __post_init__(self):
        check_number(self.v_num_grad_steps, "v_num_grad_steps", "an integer in 1..1000",
                     lambda v: 1 <= v <= 1000, integer=True)
        check_number(self.v_lr, "v_lr", "> 0", lambda v: v > 0)
        check_number(self.v_weight_decay, "v_weight_decay", ">= 0", lambda v: v >= 0)
        check_number(self.kl_factor, "kl_factor", ">= 0", lambda v: v >= 0)
        check_number(self.clamp_norm_factor, "clamp_norm_factor", "> 0", lambda v: v > 0)
        check_number(self.mom2_n_samples, "mom2_n_samples", "an integer in 1..10000000",
                     lambda v: 1 <= v <= 10_000_000, integer=True)
        if self.corpus is not None and (not isinstance(self.corpus, str) or not self.corpus.strip()):
            raise InputError(f"must be a path to a JSONL file or None; got {self.corpus!r}", field="corpus")

    def z_kwargs(self) -> dict:
        """Keyword arguments of `editors.common.kv.compute_z` from these fields."""
        return dict(steps=self.v_num_grad_steps, lr=self.v_lr, weight_decay=self.v_weight_decay,
                    kl_factor=self.kl_factor, clamp_norm_factor=self.clamp_norm_factor)


class SubjectEditor(Editor):
    """ROME-family editors read the fact at the subject's last token: every request must name a
    subject that occurs in its prompt (checked in the session's one validation pass)."""

    @classmethod
    def check_requests(cls, requests: list, adapter) -> None:
        for r in requests:
            kv.check_subject(r)


@dataclass
class ROMEHParams(ValueHParams):
    """Hyperparameters of `rome`; defaults are ROME's (GPT-2 XL) apart from the derived layer.

    Example:
        >>> ROMEHParams().clamp_norm_factor
        4.0
        >>> ROMEHParams(v_lr=0)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "v_lr": must be > 0; got 0
    """
    layer: int | None = field(default=None, metadata={
        "help": "block whose MLP output projection is edited; negative counts from the end; "
                "default: the block at ~30% depth (ROME's early-middle layer)"})
    mom2_adjustment: bool = field(default=True, metadata={
        "help": "u = C⁻¹k (ROME); False: u = k, the plain rank-one update without key statistics"})

    def __post_init__(self):
        super().__post_init__()
        check_layer_value(self.layer)
        check_bool(self.mom2_adjustment, "mom2_adjustment")

    def derive(self, adapter) -> "ROMEHParams":
        """Fill `layer` (~30% depth) and check it fits the model."""
        return dataclasses.replace(self, layer=resolve_layer(adapter, self.layer, depth=ROME_DEPTH))


@register_editor
class ROMEEditor(SubjectEditor):
    """Rank-one edit of one MLP output projection per fact. See the module docstring.

    Example:
        >>> patch = ROMEEditor().edit(ctx, [request])      # doctest: +SKIP
    """
    name = "rome"
    capabilities = Capabilities(batch=False, sequential=True, forget=False, single_revert=False)
    hparams_class = ROMEHParams

    def run(self, ctx: EditContext, batch: Batch, hp: ROMEHParams) -> Patch:
        (req,) = batch  # one fact per call: no batch capability (use memit for a batch)
        module = ctx.adapter.mlp_out(hp.layer)
        name = ctx.adapter.param_name(module)
        rec = ctx.recorder([name])
        stats = rank_one_update(ctx, req, hp)
        return rec.patch(meta={"param": name, **stats})


def rank_one_update(ctx: EditContext, req: EditRequest, hp: ROMEHParams) -> dict:
    """Write `req` into layer `hp.layer` with ROME's rank-one update, in place; returns diagnostics."""
    model, tok, adapter, layer = ctx.model, ctx.tokenizer, ctx.adapter, hp.layer
    keys = kv.subject_keys(model, tok, adapter, layer, [req])[0]  # (n_templates, d_ff)
    k_star = keys.mean(0)  # (d_ff,) compute_u: the key averaged over context prefixes
    if hp.mom2_adjustment:
        C = kv_stats.second_moments(model, tok, adapter, [layer], corpus=hp.corpus,
                              n_samples=hp.mom2_n_samples)[layer].to(k_star.device)  # (d_ff, d_ff)
        u = solve_psd(C, k_star[:, None])[:, 0]  # (d_ff,) C⁻¹ k*
    else:
        u = k_star
    u = u / u.norm()
    z = kv.compute_z(model, tok, adapter, req, layer=layer, site="mlp_out", **hp.z_kwargs())
    k0 = keys[0]  # (d_ff,) the bare prompt's key (template "{}")
    w0 = kv.mlp_value(adapter, layer, k0[None])[0]  # (hidden,) what W writes there now
    right = (z.target - w0) / torch.dot(k0, u)  # (hidden,) so that (W + right uᵀ) k0 = v*
    module = adapter.mlp_out(layer)
    w = adapter.weight(module)  # (hidden, d_ff) view, whatever the storage orientation
    adapter.set_weight(module, w.detach().float() + torch.outer(right, u))
    return {"v_steps": z.steps, "v_loss_first": z.loss_first, "v_loss_last": z.loss_last,
            "delta_norm": float((z.target - z.init).norm()), "update_norm": float(right.norm())}


def solve_psd(C: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """C⁻¹ B in float64 for a (d, d) second-moment matrix C and (d, m) B.

    A jitter of 1e-8 × mean diagonal is added because a neuron that never fires on the
    corpus (ReLU) makes C singular; at that size it changes no well-posed solution.
    """
    C64 = C.double()
    jitter = 1e-8 * C64.diagonal().mean().clamp_min(1e-30)
    eye = torch.eye(C64.shape[0], dtype=torch.float64, device=C64.device)
    return torch.linalg.solve(C64 + jitter * eye, B.double()).to(B.dtype)
