"""`ga`, `npo` and `simnpo`: the unlearning baselines every paper compares against, as in open-unlearning.

Both fine-tune the model on the forget requests with one shared loop (`_unlearn`), following
locuslab/open-unlearning (`src/trainer/unlearn/grad_ascent.py`, `grad_diff.py`, `npo.py`):

- `ga` (GradAscent / GradDiff): loss = -NLL_forget + alpha * NLL_retain. NLL is the mean
  token cross-entropy over the answer tokens (the question is masked, as in their TOFU
  collator). With `retain_weight` (alpha) = 0 -- the default -- it is pure GradAscent;
  alpha > 0 is GradDiff.
- `npo` (Zhang et al. 2024, "Negative Preference Optimization"):
  loss = -(2/beta) * mean log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))
         + alpha * NLL_retain,
  where log pi(y|x) is the *summed* log-prob of the answer tokens (their `compute_dpo_loss`)
  and pi_ref is a frozen deep copy of the model taken when the edit starts (deleted after).
  beta = 0.1 and alpha = 1 as in their NPO config.
- `simnpo` (Fan et al. 2024, "Simplicity Prevails"; their `simnpo.py`): NPO without the
  reference model and with length normalisation:
  loss = gamma * -(2/beta) * mean log sigmoid(beta * (NLL(y|x)/|y| - delta)) + alpha * NLL_retain,
  NLL summed over the answer tokens and divided by their count; beta = 4.5, gamma = 0.125,
  delta = 0 and alpha = 1 as in their TOFU config. Its forget gradient is gamma * 2 *
  sigmoid(-beta * mean NLL) per token, far weaker than NPO's at the start, hence a default
  learning rate of 1e-3 where `npo` has 1e-4.

The retain term pairs each forget request of a step with a randomly drawn retain probe (their
`ForgetRetainDataset` anchors on forget and samples retain); with no retain probes on the
requests it is left out, and `patch.meta["retain_used"]` says so.

Deliberate differences, for a tiny model and a per-edit tool: full-batch steps (all forget
requests per optimizer step unless `batch_size`), `steps` optimizer steps instead of epochs,
AdamW with a larger learning rate than their 1e-5 for 7B models (scaled for a 4-layer model),
no warm-up/scheduler, and by default only the MLP weights are trained (`params="mlp"`: every
layer's MLP input and output projections); `params="all"` trains every parameter as they do.
Every trained parameter is recorded, so the patch holds those whole tensors (large; exact).

Example:
    >>> hp = NPOHParams(steps=20).derive(ctx.adapter)                     # doctest: +SKIP
    >>> patch = NPOEditor(hp).edit(ctx, with_retain(forget, retain))      # doctest: +SKIP
    >>> patch.meta["loss_last"] < patch.meta["loss_first"]                # doctest: +SKIP
    True
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from editors.common.losses import answer_logprobs as _answer_logprobs, retain_pairs
from workbench.core.offload import onload
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_choice, check_number,
                                        trainable_only)
from workbench.editing.registry import register_editor
from workbench.eval.scoring import pad_id

PARAMS = ("mlp", "all")


@dataclass
class GAHParams(HParams):
    """Hyperparameters of `ga` (GradAscent; GradDiff with retain_weight > 0).

    Example:
        >>> GAHParams(retain_weight=1.0).retain_weight
        1.0
        >>> GAHParams(params="embeddings")
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "params": must be one of mlp, all; got 'embeddings'
    """
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (> 0)"})
    steps: int = field(default=10, metadata={"help": "optimizer steps, each over all forget batches (1..10000)"})
    retain_weight: float = field(default=0.0, metadata={
        "help": "alpha: weight of the retain NLL term (0 = pure gradient ascent; >= 0)"})
    params: str = field(default="mlp", metadata={"choices": PARAMS, 
        "help": "what is trained: 'mlp' (every MLP projection) or 'all' (every parameter)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (>= 0), as open-unlearning"})
    batch_size: int = field(default=0, metadata={"help": "forget requests per step; 0 = all at once (>= 0)"})

    def __post_init__(self):
        check_number(self.lr, "lr", "> 0 (AdamW learning rate)", lambda v: v > 0)
        check_number(self.steps, "steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        check_number(self.retain_weight, "retain_weight", ">= 0", lambda v: v >= 0)
        check_choice(self.params, "params", PARAMS)
        check_number(self.weight_decay, "weight_decay", ">= 0", lambda v: v >= 0)
        check_number(self.batch_size, "batch_size", "an integer >= 0 (0 = all requests at once)", lambda v: v >= 0,
                     integer=True)


@dataclass
class NPOHParams(GAHParams):
    """Hyperparameters of `npo`: those of `ga` plus beta; alpha defaults to 1 (their NPO config).

    Example:
        >>> NPOHParams().beta, NPOHParams().retain_weight
        (0.1, 1.0)
        >>> NPOHParams(beta=0)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "beta": must be > 0 (inverse temperature); got 0
    """
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (> 0)"})
    steps: int = field(default=20, metadata={"help": "optimizer steps, each over all forget batches (1..10000)"})
    retain_weight: float = field(default=1.0, metadata={
        "help": "alpha: weight of the retain NLL term (>= 0; used when the requests carry retain probes)"})
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (> 0)"})

    def __post_init__(self):
        super().__post_init__()
        check_number(self.beta, "beta", "> 0 (inverse temperature)", lambda v: v > 0)


@dataclass
class SimNPOHParams(GAHParams):
    """Hyperparameters of `simnpo`: those of `ga` plus beta, delta and the forget weight gamma.

    Example:
        >>> h = SimNPOHParams()
        >>> h.beta, h.forget_weight, h.delta, h.retain_weight
        (4.5, 0.125, 0.0, 1.0)
        >>> SimNPOHParams(forget_weight=0)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "forget_weight": must be > 0 (gamma); got 0
    """
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (> 0)"})
    steps: int = field(default=20, metadata={"help": "optimizer steps, each over all forget batches (1..10000)"})
    retain_weight: float = field(default=1.0, metadata={
        "help": "alpha: weight of the retain NLL term (>= 0; used when the requests carry retain probes)"})
    beta: float = field(default=4.5, metadata={"help": "SimNPO inverse temperature beta (> 0)"})
    delta: float = field(default=0.0, metadata={"help": "margin subtracted from the mean answer NLL (>= 0)"})
    forget_weight: float = field(default=0.125, metadata={"help": "gamma: weight of the forget term (> 0)"})

    def __post_init__(self):
        super().__post_init__()
        check_number(self.beta, "beta", "> 0 (inverse temperature)", lambda v: v > 0)
        check_number(self.delta, "delta", ">= 0", lambda v: v >= 0)
        check_number(self.forget_weight, "forget_weight", "> 0 (gamma)", lambda v: v > 0)


class _Unlearner(Editor):
    """What `ga` and `npo` share: parameter choice, recording, the training loop."""
    capabilities = Capabilities(batch=True, sequential=True, forget=True, single_revert=False)

    def run(self, ctx: EditContext, batch: Batch, hp: GAHParams) -> Patch:
        retain = retain_pairs(ctx.tokenizer, batch)
        params = _trainable(ctx, hp.params)  # [(state_dict name, parameter)]
        rec = ctx.recorder([n for n, _ in params])
        stats = _unlearn(ctx, [p for _, p in params], list(batch.pairs), retain, hp, self._forget_loss)
        return rec.patch(meta={"params_trained": len(params), "retain_used": bool(retain) and hp.retain_weight > 0,
                               **stats})

    def _forget_loss(self, model, ref, chunk, hp, pad_id) -> torch.Tensor:
        raise NotImplementedError


@register_editor
class GAEditor(_Unlearner):
    """Gradient ascent on the forget answers' NLL (GradAscent; GradDiff with retain_weight > 0).

    Example:
        >>> patch = GAEditor(GAHParams(steps=5)).edit(ctx, forget_requests)   # doctest: +SKIP
    """
    name = "ga"
    hparams_class = GAHParams

    def _forget_loss(self, model, ref, chunk, hp, pad_id):
        logp, count = _answer_logprobs(model, chunk, pad_id)  # (b,), (b,)
        return logp.sum() / count.sum()  # = -(mean token NLL): minimizing it ascends the NLL


@register_editor
class NPOEditor(_Unlearner):
    """Negative Preference Optimization against a frozen copy of the model (+ retain NLL).

    Example:
        >>> patch = NPOEditor(NPOHParams(beta=0.1)).edit(ctx, forget_requests)  # doctest: +SKIP
    """
    name = "npo"
    hparams_class = NPOHParams

    def _forget_loss(self, model, ref, chunk, hp, pad_id):
        logp, _ = _answer_logprobs(model, chunk, pad_id)       # (b,) summed answer log-prob
        with torch.no_grad():
            ref_logp, _ = _answer_logprobs(ref, chunk, pad_id)  # (b,) same, frozen model
        return -(2.0 / hp.beta) * F.logsigmoid(-hp.beta * (logp - ref_logp)).mean()


@register_editor
class SimNPOEditor(_Unlearner):
    """SimNPO: reference-free, length-normalised NPO (+ retain NLL).

    Example:
        >>> patch = SimNPOEditor(SimNPOHParams()).edit(ctx, forget_requests)  # doctest: +SKIP
    """
    name = "simnpo"
    hparams_class = SimNPOHParams

    def _forget_loss(self, model, ref, chunk, hp, pad_id):
        logp, count = _answer_logprobs(model, chunk, pad_id)  # (b,) summed answer log-prob, (b,) tokens
        mean_nll = -logp / count  # (b,)
        return hp.forget_weight * -(2.0 / hp.beta) * F.logsigmoid(hp.beta * (mean_nll - hp.delta)).mean()


def _trainable(ctx: EditContext, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    # Modules a device map offloaded are made resident first: the optimizer must hold the
    # Parameters the forward pass uses, not the meta stand-ins accelerate swaps out.
    if which == "all":
        for m in ctx.model.modules():
            onload(m)
        return [(n, p) for n, p in ctx.model.named_parameters()]  # shared (tied) tensors listed once
    ad, out = ctx.adapter, []
    for i in range(ad.num_layers):
        for m in [*ad.mlp_in(i), ad.mlp_out(i)]:
            onload(m)
            out += [(ad.param_name(m, k), p) for k, p in m.named_parameters(recurse=False)]
    return out


def _unlearn(ctx: EditContext, params, forget, retain, hp: GAHParams, forget_loss) -> dict:
    """The shared loop: AdamW on `params`, in place; returns loss statistics for patch.meta."""
    model, pad = ctx.model, pad_id(ctx.tokenizer)
    grads = {p: p.grad for p in params}
    size = hp.batch_size or len(forget)
    batches = [forget[s:s + size] for s in range(0, len(forget), size)]
    ref = None
    losses: list[float] = []
    try:
        if isinstance(hp, NPOHParams):  # the reference policy: the model as it was when the edit began
            ref = copy.deepcopy(model).eval().requires_grad_(False)
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        gen = torch.Generator().manual_seed(ctx.seed)  # local RNG: retain draws; the caller's stream is untouched
        with trainable_only(model, params):
            for _ in range(hp.steps):
                total = 0.0
                for chunk in batches:
                    opt.zero_grad(set_to_none=True)
                    loss = forget_loss(model, ref, chunk, hp, pad)
                    if retain and hp.retain_weight > 0:
                        pick = torch.randint(len(retain), (len(chunk),), generator=gen).tolist()
                        logp, count = _answer_logprobs(model, [retain[i] for i in pick], pad)  # (b,), (b,)
                        loss = loss + hp.retain_weight * (-logp.sum() / count.sum())  # retain mean token NLL
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(chunk)
                losses.append(total / len(forget))
    finally:
        del ref  # the frozen copy is freed with the edit
        for p, g in grads.items():
            p.grad = g
    return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "losses": [round(v, 4) for v in losses]}
