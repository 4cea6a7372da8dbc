"""`rmu`: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark").

Following their `rmu/unlearn.py`: a fixed random direction u (uniform entries, normalised) is
scaled by a steering coefficient c; the model is trained so that at one layer's output the
forget tokens' activations go to c·u, while the retain tokens' activations stay those of a
frozen copy of the model:

    loss = mean_f ||h_ℓ(x_f) - c·u||² / d  +  alpha · mean_r ||h_ℓ(x_r) - h_ℓ^frozen(x_r)||² / d

(`F.mse_loss`, i.e. averaged over tokens and the d hidden units, as theirs). Only the MLP output
projections of layers ℓ-2..ℓ are trained (their `layer_ids = [5, 6, 7]`, `param_ids = [6]`
with `layer_id = 7` of 32: the `down_proj` of three consecutive layers up to ℓ). The forget and
retain texts are each request's prompt and answer, and the retain probes attached to the
requests (`with_retain`); each step draws `retain_batch` of them with the edit's seed (theirs
pairs each forget batch with a retain batch of as many 512-token documents; our probes are a
few tokens each, so more of them are drawn).

Deliberate differences, stated:
- the layer: by default ~25% of the depth (theirs 7 of 32 layers); `layer` sets it;
- the steering coefficient: theirs is set by hand per model (6.5 for Zephyr-7B, at activation
  norms far larger than a 4-layer model's). With `steering_coeff=0` (default) it is set the way
  Adaptive RMU does (Dang et al. 2024): `adaptive_scale` times the mean norm of the forget
  tokens' activations at ℓ, measured once before training; a positive `steering_coeff` is used
  as given;
- padding positions and each text's first (BOS) position are masked out of both terms (theirs
  pad to a fixed length and include them; see `_activations`);
- full-batch optimizer steps (`steps` of them) instead of one pass over 80 batches, and a
  learning rate (3e-3) and retain weight (alpha 10) for a 4-layer model instead of their 5e-5
  and 1200 for 7B models.

Example:
    >>> patch = RMUEditor(RMUHParams().derive(ctx.adapter)).edit(ctx, with_retain(forget, retain))  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from editors.common.losses import retain_pairs
from workbench.core.arch import get_adapter
from workbench.core.offload import onload
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_number,
                                        trainable_only)
from workbench.editing.registry import register_editor
from workbench.eval.scoring import pad_id, right_pad


@dataclass
class RMUHParams(HParams):
    """Hyperparameters of `rmu`.

    Example:
        >>> RMUHParams().alpha
        10.0
        >>> RMUHParams(adaptive_scale=-1)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "adaptive_scale": must be > 0; got -1
    """
    layer: int | None = field(default=None, metadata={
        "help": "layer whose output is steered (default: ~25% of the depth; negative counts from the end)"})
    update_layers: int = field(default=3, metadata={
        "help": "how many layers up to `layer` have their MLP output projection trained (1..64)"})
    steering_coeff: float = field(default=0.0, metadata={
        "help": "c, the norm of the target activation (> 0); 0 = adaptive: adaptive_scale x the forget "
                "activations' mean norm"})
    adaptive_scale: float = field(default=2.0, metadata={"help": "the adaptive c's multiple of the mean norm (> 0)"})
    alpha: float = field(default=10.0, metadata={"help": "weight of the retain term (>= 0)"})
    retain_batch: int = field(default=64, metadata={"help": "retain probes drawn for each step (1..4096)"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate (> 0)"})
    steps: int = field(default=30, metadata={"help": "optimizer steps over all forget requests (1..10000)"})

    def __post_init__(self):
        if self.layer is not None:
            check_number(self.layer, "layer", "an integer layer index", lambda v: True, integer=True)
        check_number(self.update_layers, "update_layers", "an integer in 1..64", lambda v: 1 <= v <= 64, integer=True)
        check_number(self.steering_coeff, "steering_coeff", ">= 0 (0 = adaptive)", lambda v: v >= 0)
        check_number(self.adaptive_scale, "adaptive_scale", "> 0", lambda v: v > 0)
        check_number(self.alpha, "alpha", ">= 0", lambda v: v >= 0)
        check_number(self.retain_batch, "retain_batch", "an integer in 1..4096", lambda v: 1 <= v <= 4096, integer=True)
        check_number(self.lr, "lr", "> 0 (AdamW learning rate)", lambda v: v > 0)
        check_number(self.steps, "steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)

    def derive(self, adapter) -> "RMUHParams":
        layer = adapter.default_layer(0.25) if self.layer is None else adapter.layer_index(self.layer)
        return dataclasses.replace(self, layer=layer)


@register_editor
class RMUEditor(Editor):
    """Steer the forget set's activations at one layer to a random direction; hold the retain set's."""
    name = "rmu"
    hparams_class = RMUHParams
    capabilities = Capabilities(batch=True, sequential=True, forget=True, single_revert=False)

    def run(self, ctx: EditContext, batch: Batch, hp: RMUHParams) -> Patch:
        ad, model, pad = ctx.adapter, ctx.model, pad_id(ctx.tokenizer)
        trained = [ad.mlp_out(i) for i in range(max(0, hp.layer - hp.update_layers + 1), hp.layer + 1)]
        params = []
        for m in trained:
            onload(m)
            params += [(ad.param_name(m, k), p) for k, p in m.named_parameters(recurse=False)]
        rec = ctx.recorder([n for n, _ in params])
        forget = [p + a for p, a in batch.pairs]
        retain = [p + a for p, a in retain_pairs(ctx.tokenizer, batch)]
        gen = torch.Generator().manual_seed(ctx.seed)  # local RNG: the direction and retain draws
        u = torch.rand(ad.hidden_size, generator=gen)  # (d,) uniform entries, as theirs
        u = u / u.norm()
        block = ad.layer(hp.layer)
        with torch.no_grad():
            norm = _activations(model, block, forget, pad).norm(dim=-1).mean().item()  # mean token norm at ℓ
        coeff = hp.steering_coeff or hp.adaptive_scale * norm
        frozen = copy.deepcopy(model).eval().requires_grad_(False) if retain and hp.alpha > 0 else None
        frozen_block = get_adapter(frozen).layer(hp.layer) if frozen is not None else None
        losses = []
        grads = {p: p.grad for _, p in params}
        try:
            opt = torch.optim.AdamW([p for _, p in params], lr=hp.lr)
            with trainable_only(model, [p for _, p in params]):
                for _ in range(hp.steps):
                    opt.zero_grad(set_to_none=True)
                    h = _activations(model, block, forget, pad)  # (tokens, d)
                    target = (coeff * u).to(h.dtype).expand_as(h)
                    loss = torch.nn.functional.mse_loss(h, target)
                    if frozen is not None:
                        pick = torch.randint(len(retain), (hp.retain_batch,), generator=gen).tolist()
                        chunk = [retain[i] for i in pick]
                        with torch.no_grad():
                            want = _activations(frozen, frozen_block, chunk, pad)  # (tokens, d)
                        loss = loss + hp.alpha * torch.nn.functional.mse_loss(_activations(model, block, chunk, pad), want)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
        finally:
            del frozen
            for p, g in grads.items():
                p.grad = g
        return rec.patch(meta={"layer": hp.layer, "trained_layers": [ad.module_name(m) for m in trained],
                               "steering_coeff": coeff, "forget_norm": norm, "retain_used": frozen_block is not None,
                               "loss_first": losses[0], "loss_last": losses[-1],
                               "losses": [round(v, 4) for v in losses]})


def _activations(model, block, seqs: list[list[int]], pad: int) -> torch.Tensor:
    """(real tokens, d): the output of `block` at every non-padding position of `seqs` after the
    first. The first position is left out: it is the same BOS token in every text, an attention
    sink whose activation norm is ~4x the others' on the shipped model, and in a 15-token probe
    (theirs: 512-token documents) it would dominate both the adaptive coefficient and the loss."""
    ids, mask = right_pad(seqs, pad)  # (b, seq)
    device = next(model.parameters()).device
    seen = {}

    def grab(_mod, _args, out):
        seen["h"] = out[0] if isinstance(out, tuple) else out  # (b, seq, d)
        raise _Reached  # the layers above ℓ and the LM head are not needed: stop the forward here

    handle = block.register_forward_hook(grab)
    try:
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    except _Reached:
        pass
    finally:
        handle.remove()
    mask[:, 0] = 0  # the model read BOS; the loss leaves it out
    return seen["h"][mask.to(device).bool()].float()  # (tokens, d)


class _Reached(Exception):
    """Raised from the steered layer's hook to end a forward pass there."""
