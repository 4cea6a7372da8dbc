"""`memoir`: MEMOIR, lifelong model editing with minimal overwrite and informed retention
(Wang et al., NeurIPS 2025, arXiv 2506.07899; hyperparameters from qym7/MEMOIR
`hparams/MEMOIR/llama3-8b.yaml`).

A zero-initialised residual memory W_m beside one MLP output projection (default: the block at
MEMOIR's depth, layer 27 of LLaMA-3-8B's 32, ≈ 87%); the layer writes `W a + W_m (a ⊙ m)`.

Editing (one request at a time, in order): the edit row is prompt + target; its mask m is
TopHash of the row's keys (their mean minus a background mean, the top k = `top_k_ratio` of the
width by magnitude — 4096 of 14336 in the paper — sent through a fixed random permutation);
only the columns of W_m that m picks are trained, `steps` SGD steps at `lr` on the target's
cross-entropy ("only_label"), starting from what earlier edits left there; the mask is stored.

Inference: a query's mask is computed the same way from its own keys; the memory is read
(through the query's mask) only if the best overlap |m ∩ m_e| / k with a stored mask is at least
τ = `threshold` (0.4). See `memory.py` for the module and what is recorded per edit.

The paper's two ablations are options: `router="none"` reads the memory for every query
(no conditional routing), `masks="random"` replaces TopHash by a mask drawn at random per input.

`memoir-key` (ours; the same memory and training, other defaults) changes two things, because
on the shipped model the paper's router reads the memory for nearly every prompt that shares an
edit's template (a prompt's pooled key is mostly its template):
- the router (`router="key"`, `key_gate="subject"`, `key_threshold` 0.8): each *position* is
  matched on its own centred key against the keys the edits' rows had where they predict their
  answers, only among the edits whose subject's tokens the query contains before it; a match reads
  W_m through that edit's mask (`memory.py`);
- the edit masks (`masks="random"`): with routing done by keys, a mask need not carry meaning, and
  random masks overlap no more than chance, where TopHash masks of same-template edits share most
  columns and later edits overwrite earlier ones.

Not in the published description we could read (the reference repository's method code is not
available here; its config is): which positions the aggregation pools — here every real position
of the forward call, the edit row's prompt and target included, as WISE's router does, and in
cached decoding the prompt's decision is kept for the generated tokens; the background mean is
taken over the workbench corpus (`editors.common.corpus`), `background_samples` texts, each
text's mean key first; the optimiser is plain SGD.

Example:
    >>> patch = MEMOIREditor().edit(ctx, [request])              # doctest: +SKIP
    >>> patch.attachments[0].kind                                  # doctest: +SKIP
    'memoir_memory'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_choice,
                                        check_layer_value, check_number, resolve_layer)
from workbench.editing.registry import register_editor

from .memory import ATTR, GATES, MASKS, ROUTERS, MEMOIRAttachment, MEMOIRMemory

MEMOIR_DEPTH = 27 / 31  # the paper's layer 27 of LLaMA-3-8B's 32 blocks

__all__ = ["MEMOIREditor", "MEMOIRHParams", "MEMOIRKeyEditor", "MEMOIRKeyHParams", "MEMOIRMemory",
           "MEMOIRAttachment"]


@dataclass
class MEMOIRHParams(HParams):
    """Hyperparameters of `memoir`; defaults are the paper's LLaMA-3-8B config (lr 1.0, 30 steps,
    k = 4096 / 14336 of the width, τ = 0.4). `layer`, `top_k_ratio`, `threshold`, `masks` and
    `router` are fixed by the first MEMOIR edit of a model (they shape its memory).

    Example:
        >>> MEMOIRHParams().threshold, round(MEMOIRHParams().top_k_ratio, 4)
        (0.4, 0.2857)
    """
    layer: int | None = field(default=None, metadata={
        "help": "block whose MLP output projection gets the residual memory; default: ~87% depth (the paper's 27/31)"})
    steps: int = field(default=30, metadata={"help": "SGD steps per edit (1..10000)"})
    lr: float = field(default=1.0, metadata={"help": "SGD learning rate (> 0)"})
    top_k_ratio: float = field(default=4096 / 14336, metadata={
        "help": "share of the MLP width a mask keeps, k / d_ff (0, 1); the paper's 4096 of 14336"})
    threshold: float = field(default=0.4, metadata={
        "help": "τ: least mask overlap |m ∩ m_e| / k with a stored edit for a query to read the memory [0, 1]"})
    masks: str = field(default="tophash", metadata={"choices": MASKS, 
        "help": "'tophash' (the paper) or 'random' (its ablation: a random mask per input)"})
    router: str = field(default="mask", metadata={"choices": ROUTERS, 
        "help": "'mask' (the paper: read the memory when the best mask overlap reaches τ), 'none' (its "
                "ablation: always read it) or 'key' (ours: per position, by the cosine of the centred key "
                "with the edits' keys at their answer positions, reading the matched edit's mask)"})
    key_threshold: float = field(default=0.8, metadata={
        "help": "router='key': least cosine with a stored edit key for a position to read the memory [-1, 1]"})
    key_gate: str = field(default="none", metadata={"choices": GATES, 
        "help": "router='key': 'none' (compare with every edit's keys) or 'subject' (only with the edits whose "
                "subject's tokens occur in the query before the position; every request needs its subject)"})
    background_samples: int = field(default=200, metadata={
        "help": "corpus texts whose mean key is subtracted before the top-k (1..100000)"})

    def __post_init__(self):
        check_layer_value(self.layer)
        check_number(self.steps, "steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        check_number(self.lr, "lr", "> 0", lambda v: v > 0)
        check_number(self.top_k_ratio, "top_k_ratio", "in (0, 1)", lambda v: 0 < v < 1)
        check_number(self.threshold, "threshold", "in [0, 1]", lambda v: 0 <= v <= 1)
        check_choice(self.masks, "masks", MASKS)
        check_choice(self.router, "router", ROUTERS)
        check_number(self.key_threshold, "key_threshold", "in [-1, 1]", lambda v: -1 <= v <= 1)
        check_choice(self.key_gate, "key_gate", GATES)
        check_number(self.background_samples, "background_samples", "an integer in 1..100000",
                     lambda v: 1 <= v <= 100_000, integer=True)

    def derive(self, adapter) -> "MEMOIRHParams":
        return dataclasses.replace(self, layer=resolve_layer(adapter, self.layer, depth=MEMOIR_DEPTH))


@torch.no_grad()
def background_mean(model, tok, adapter, layer: int, n_texts: int) -> torch.Tensor:
    """(d_ff,) the mean over corpus texts of each text's mean MLP key at `layer`."""
    from editors.common.corpus import default_corpus
    from editors.common.kv import _device, _pad_batch
    from workbench.eval.scoring import pad_id
    texts = default_corpus()[:n_texts]
    seqs = [ids for ids in tok(texts, truncation=True, max_length=64)["input_ids"] if ids]
    total, rows = None, 0
    grabbed: list[torch.Tensor] = []
    handle = adapter.hook_mlp_neurons(layer, lambda acts: grabbed.append(acts.detach().float()))
    try:
        for s in range(0, len(seqs), 32):
            ids, mask = _pad_batch(seqs[s:s + 32], pad_id(tok), _device(model))
            grabbed.clear()
            model(input_ids=ids, attention_mask=mask)
            a = grabbed[0].reshape(*ids.shape, -1)  # (b, seq, d_ff)
            w = mask[..., None].float()
            per_text = (a * w).sum(1) / w.sum(1)  # (b, d_ff)
            total = per_text.sum(0) if total is None else total + per_text.sum(0)
            rows += per_text.shape[0]
    finally:
        handle.remove()
    return (total / rows).cpu()


def _edit_mask(model, adapter, mem: MEMOIRMemory, ids: torch.Tensor, answer_from: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_ff,) bool: the mask of one edit row (1, seq), as the router will compute it; and the
    row's centred keys (p, d_ff) at the positions that predict the answer (from `answer_from` − 1)."""
    grabbed: list[torch.Tensor] = []
    handle = adapter.hook_mlp_neurons(mem.layer, lambda acts: grabbed.append(acts.detach().float()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    a = grabbed[0].reshape(*ids.shape, -1)  # (1, seq, d_ff)
    keys = mem.centred_keys(a[0, answer_from - 1:-1])  # (p, d_ff)
    return mem.mask_of(a, torch.ones(ids.shape, device=a.device), ids)[0], keys


def subject_variants(tok, req) -> list[list[int]]:
    """The subject's token ids as the prompt has them, and alone with and without a leading space
    (how a query may spell it at its start or mid-sentence)."""
    span = req.subject_span() if req.subject else None
    if span is None:
        raise req.input_error("key_gate='subject' needs each request's subject, occurring in its prompt"
                              if not req.subject else
                              f"subject {req.subject!r} does not occur in the prompt {req.prompt!r}", field="subject")
    enc = tok(req.prompt, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if b > span[0] and a < span[1]]
    return [inside] + [tok(t, add_special_tokens=False)["input_ids"] for t in (req.subject, " " + req.subject)]


def train_edit(model, adapter, mem: MEMOIRMemory, ids: torch.Tensor, answer_from: int,
               hp: MEMOIRHParams, subjects: list[list[int]] | None = None) -> dict:
    """Train the columns of W_m one edit's mask picks; store the mask (and keys). ids (1, seq),
    the answer from position `answer_from` on."""
    labels = ids.clone()
    labels[0, :answer_from] = -100  # only the target is learnt
    mask, keys = _edit_mask(model, adapter, mem, ids, answer_from)
    cols = mask.nonzero().flatten()  # (k,)
    values = mem.residual[:, cols].clone().float().requires_grad_(True)  # (out, k)
    opt = torch.optim.SGD([values], lr=hp.lr)
    mem.train_cols, mem.train_values = cols, values
    losses = []
    try:
        with torch.enable_grad():
            for _ in range(hp.steps):
                loss = model(input_ids=ids, labels=labels).loss  # mean CE over the target's tokens
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        mem.train_cols = mem.train_values = None
    with torch.no_grad():
        mem.residual[:, cols] = values.detach().to(mem.residual.dtype)
    mem.append(mask, keys, subjects)
    return {"loss_first": losses[0], "loss_last": losses[-1]}


@register_editor
class MEMOIREditor(Editor):
    """MEMOIR: sparse-masked residual memory with mask-overlap routing. See the module docstring.

    Example:
        >>> ed = MEMOIREditor(MEMOIRHParams(steps=20))                         # doctest: +SKIP
        >>> for r in requests: ed.edit(EditContext(model, tok, adapter), [r])   # doctest: +SKIP
    """
    name = "memoir"
    # Edits share W_m's columns (where masks overlap) and the mask table: no single revert.
    capabilities = Capabilities(batch=True, sequential=True, forget=False, single_revert=False)
    hparams_class = MEMOIRHParams

    def effective_hparams(self, ctx: EditContext, hp: MEMOIRHParams) -> MEMOIRHParams:
        """A memory already in place fixed its layer, mask size, threshold, masks and router."""
        mem = getattr(ctx.model, ATTR, None)
        if mem is None:
            return hp
        return dataclasses.replace(hp, layer=mem.layer, top_k_ratio=mem.top_k / mem.residual.shape[1],
                                   threshold=mem.tau, masks=mem.mask_kind, router=mem.router,
                                   key_threshold=mem.key_tau, key_gate=mem.key_gate)

    def run(self, ctx: EditContext, batch: Batch, hp: MEMOIRHParams) -> Patch:
        model, adapter = ctx.model, ctx.adapter
        mem = getattr(model, ATTR, None)
        first = mem is None
        if first:
            w = adapter.weight(adapter.mlp_out(hp.layer))  # (out, in)
            k = max(1, round(hp.top_k_ratio * w.shape[1]))
            mem = MEMOIRMemory(hp.layer, w.shape[0], w.shape[1], k, hp.threshold, hp.masks, hp.router,
                               dtype=w.dtype, key_threshold=hp.key_threshold, key_gate=hp.key_gate)
            mem.background.copy_(background_mean(model, ctx.tokenizer, adapter, hp.layer, hp.background_samples))
            mem.to(w.device)
            mem.install(model, adapter)
            ctx.on_error(lambda: mem.uninstall(model))
        else:
            rec = ctx.recorder([f"{ATTR}.{k}" for k, _ in mem.named_buffers()])
        for p in model.parameters():  # only the memory's columns train
            p.requires_grad_(False)
        stats = []
        device = mem.residual.device
        for req, (prompt_ids, answer_ids) in zip(batch, batch.pairs):
            ids = torch.tensor([prompt_ids + answer_ids], device=device)  # (1, seq)
            subjects = subject_variants(ctx.tokenizer, req) if mem.key_gate == "subject" else None
            stats.append(train_edit(model, adapter, mem, ids, len(prompt_ids), hp, subjects))
        meta = {"loss_first": sum(s["loss_first"] for s in stats) / len(stats),
                "loss_last": sum(s["loss_last"] for s in stats) / len(stats),
                "edits_total": mem.n, "top_k": mem.top_k}
        if first:
            return Patch([], [MEMOIRAttachment.of(mem)], meta)
        return rec.patch(meta=meta)


@dataclass
class MEMOIRKeyHParams(MEMOIRHParams):
    """`memoir-key`: MEMOIR's memory and training with our router (see the module docstring).

    Example:
        >>> hp = MEMOIRKeyHParams()
        >>> hp.router, hp.masks, hp.key_gate, hp.key_threshold
        ('key', 'random', 'subject', 0.8)
    """
    masks: str = field(default="random", metadata={"choices": MASKS, 
        "help": "'random' (ours: the edit row's mask is a random draw, so edits overlap no more than chance) "
                "or 'tophash' (the paper's)"})
    router: str = field(default="key", metadata={"choices": ROUTERS, 
        "help": "'key' (ours), 'mask' or 'none' (the paper's router and its ablation)"})
    key_gate: str = field(default="subject", metadata={"choices": GATES, 
        "help": "'subject' (only edits whose subject's tokens occur in the query before the position; "
                "every request needs its subject) or 'none' (compare with every edit's keys)"})


@register_editor
class MEMOIRKeyEditor(MEMOIREditor):
    """MEMOIR with our router: per-position key matching gated by the edited subject, each edit's
    columns a random draw. Shares the model's MEMOIR memory with `memoir` (the first edit fixes it).

    Example:
        >>> ed = MEMOIRKeyEditor()                                             # doctest: +SKIP
        >>> for r in requests: ed.edit(EditContext(model, tok, adapter), [r])   # doctest: +SKIP
    """
    name = "memoir-key"
    hparams_class = MEMOIRKeyHParams
