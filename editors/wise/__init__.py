"""`wise`: WISE side memory for lifelong knowledge editing (Wang et al., NeurIPS 2024), as the paper's
reference code (EasyEdit `easyeditor/models/wise/`) runs it; `wise-tuned`: our settings.

A side copy of one MLP output projection (default: the block at ~80% depth) is trained on the
edits while the original stays frozen; an activation-based router sends each query to the side
memory when its activation score reaches act_ratio × the weakest edit's score. Edits go into
shards of `shard_size` edits, each trained from the original weight in its own random parameter
subspace (ratio ρ); every `merge_every` edits the saved shards are TIES-merged into the merged
memory (an earlier merge weighted 0.6 against 0.4 for the new shards); the router compares the
merged memory with the live shard. With `retrieve=True` every merge group stays a memory of its
own and the router picks the best-scoring one.

How state is kept: the first WISE edit of a model returns a `WISEAttachment` (a `WISEMemory`
module added as `model.wise_memory`, with hooks on the edited projection); every later edit
returns `WeightChange`s on that module's buffers. All router and shard state is in those buffers,
so a new editor instance per edit, exact reverts and patch files all work. See `memory.py`
(module, router, merges) and `train.py` (one edit's optimisation).

`wise` — the paper's algorithm and EasyEdit's LLaMA defaults: the score ||act(W′a) − act(Wa)||
(EasyEdit's `euc`; max over tokens for inputs over 100 tokens), α, β, γ = 5, 20, 10, SGD lr 1.0 with
weight decay 1e-5 on the full side weight, ≤ 70 steps stopped by EasyEdit's loss meter, ρ = 0.2,
clamp ±1, shards of 500, merges every 1000 with TIES density 0.53, threshold 0.88 × the weakest
edit's mean score over its training rows at its last pass, the target loss normalised as its code
does (each row's sum over its t target tokens / (t + 1)); each edit trained as the prompt plus
10 generated context prefixes, with one irrelevant text.

Differs from EasyEdit, deliberately: the irrelevant text comes from the workbench's generic corpus
(the bundled world's fact sentences and filler, never one naming the edited subject or quoting the
request's locality probes; or `irrelevant_file`) in place of a disjoint ZsRE/NQ training split;
padding never enters a score (EasyEdit's means include pad positions); the side output keeps the
projection's bias (EasyEdit's drops it, which matters only for models with one); a merge that
EasyEdit does at the first inference with shards pending is a cached view here (see `memory.py`);
the retrieve router compares raw scores of memories over their own thresholds, as EasyEdit, but
with `replay` not built (its Appendix B.3 option, off in its configs).

`wise-tuned` — our settings, measured better on the shipped model (README "Lifelong editing"):
one shard that goes on learning (no saves or merges) under a fresh random mask per edit
(`mask_every=1`), ρ = 0.05, lr 0.1, margins × 0.1 (`margin_scale`: the paper's margins are
absolute scores sized for LLaMA-2-7B), ≤ 25 steps stopped when the target cross-entropy is below
0.01 and every margin holds (`stop="margins"`), the threshold from the edit's score through the
trained memory (`threshold_from="final"`, so its own rows always reach it), the paper's score formula ||Δ a|| (`score="linear"`)
with mean routing, the bare prompt only (`prefixes=0`), the mean target loss (`target_loss="mean"`), no weight decay, and 8 corpus texts plus 3
subject-scrambled copies of the prompt as irrelevant rows (`contrast_subject`: teaches the router
that the subject, not the template, calls for the memory). Every one of these is an option of
`wise` too. `score_tokens="subject"` (EasyEdit's act_mask for subject-bearing prompts) is an option
of both.

Example:
    >>> from workbench.editing.contract import EditContext                     # doctest: +SKIP
    >>> ed = WISEEditor(WISEHParams())                                 # doctest: +SKIP
    >>> patch = ed.edit(EditContext(model, tok, adapter), [request])   # doctest: +SKIP
    >>> patch.attachments[0].kind                                      # doctest: +SKIP
    'wise_memory'
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, EditContext, Editor, HParams, check_bool, check_choice,
                                        check_layer_value, check_number, resolve_layer)
from workbench.editing.registry import register_editor

from .memory import ATTR, WISEAttachment, WISEMemory
from .train import build_batch, generate_prefixes, irrelevant_pool, train_edit

ROUTES = ("auto", "mean", "max")
SCORES = ("act", "linear")
SCORE_TOKENS = ("all", "subject")
STOPS = ("loss", "margins")
THRESHOLD_FROM = ("last_pass", "final")
TARGET_LOSSES = ("easyedit", "mean")
MAX_PREFIXES = 10

__all__ = ["WISEEditor", "WISEHParams", "WISETunedEditor", "WISETunedHParams", "WISEMemory", "WISEAttachment"]

# Fixed by the first WISE edit of a model (they shape its memory); later edits run with the memory's.
MEMORY_FIELDS = ("layer", "act_ratio", "retrieve", "route", "score", "shard_size", "merge_every", "ties_density")


def _optional_count(value, name: str):
    if value in (None, 0):
        return None
    check_number(value, name, "an integer >= 1, or 0/None for never", lambda v: v >= 1, integer=True)
    return value


@dataclass
class WISEHParams(HParams):
    """Hyperparameters of `wise`; defaults are the paper's as EasyEdit's LLaMA config sets them.
    `layer`, `act_ratio`, `retrieve`, `route`, `score`, `shard_size`, `merge_every`, `ties_density`
    and `prefixes` are fixed by the first WISE edit of a model; later edits use the memory's values.

    Example:
        >>> WISEHParams().alpha, WISEHParams().mask_ratio, WISEHParams().shard_size
        (5.0, 0.2, 500)
        >>> WISEHParams(mask_ratio=1.5)
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "mask_ratio": must be in (0, 1] (share of weights a shard trains); got 1.5
    """
    layer: int | None = field(default=None, metadata={
        "help": "block whose MLP output projection gets the side memory; default: ~80% depth"})
    steps: int = field(default=70, metadata={"help": "max SGD steps per edit (1..10000); see stop"})
    lr: float = field(default=1.0, metadata={"help": "SGD learning rate (> 0)"})
    weight_decay: float = field(default=1e-5, metadata={
        "help": "SGD weight decay on the full side weight W + Δ, as EasyEdit's optimiser (>= 0)"})
    alpha: float = field(default=5.0, metadata={"help": "margin α: irrelevant inputs' score kept below it (>= 0)"})
    beta: float = field(default=20.0, metadata={"help": "margin β: edit inputs' score pushed above it (>= 0)"})
    gamma: float = field(default=10.0, metadata={"help": "margin γ: edit score minus irrelevant score (>= 0)"})
    margin_scale: float = field(default=1.0, metadata={
        "help": "multiplies α, β, γ (> 0): the paper's margins are absolute scores sized for LLaMA-2-7B; "
                "1 = the paper's values"})
    mask_ratio: float = field(default=0.2, metadata={"help": "share of weights a shard trains, ρ (0, 1]"})
    shard_size: int | None = field(default=500, metadata={
        "help": "edits per shard (EasyEdit's save_freq): then the shard is saved and the next starts from the "
                "original weight under a new mask; 0/None = one shard for ever"})
    merge_every: int | None = field(default=1000, metadata={
        "help": "merge the saved shards every this many edits (EasyEdit's merge_freq; a multiple of shard_size); "
                "0/None = never"})
    mask_every: int | None = field(default=None, metadata={
        "help": "draw a new random gradient mask every this many edits (ours; None = once per shard, the paper)"})
    ties_density: float = field(default=0.53, metadata={"help": "TIES trim density of merges (0, 1]"})
    norm_constraint: float | None = field(default=1.0, metadata={
        "help": "clamp side − main weights to ±this after each step (> 0); None/0 = no clamp"})
    act_ratio: float = field(default=0.88, metadata={
        "help": "router threshold = act_ratio × weakest edit's activation score (0, 1]"})
    retrieve: bool = field(default=False, metadata={
        "help": "WISE-Retrieve: keep each merge group as its own side memory; route to the best-scoring one"})
    stop: str = field(default="loss", metadata={"choices": STOPS, 
        "help": "'loss' (EasyEdit: the last two steps' total loss <= early_stop_loss and changed <= 1e-4) or "
                "'margins' (ours: cross-entropy below early_stop_loss and every margin met)"})
    early_stop_loss: float = field(default=0.02, metadata={"help": "the loss bound of `stop` (>= 0)"})
    target_loss: str = field(default="easyedit", metadata={"choices": TARGET_LOSSES, 
        "help": "'easyedit' (each row's summed target cross-entropy over its target token count + 1, averaged "
                "over rows: the reference code's label mask starts one position early) or 'mean' (over all "
                "target tokens)"})
    threshold_from: str = field(default="last_pass", metadata={"choices": THRESHOLD_FROM, 
        "help": "the edit's score that sets the router's threshold: 'last_pass' (EasyEdit: the mean over its "
                "training rows in the last forward pass, before the last step) or 'final' (ours: the weakest of the same rows "
                "through the trained memory, so an edit's own rows always reach the threshold)"})
    score: str = field(default="act", metadata={"choices": SCORES, 
        "help": "activation score: 'act' ||act(W′a) − act(Wa)|| (EasyEdit) or 'linear' ||(W′ − W)a|| (the "
                "paper's formula)"})
    route: str = field(default="auto", metadata={"choices": ROUTES, 
        "help": "router score of a row: 'auto' (EasyEdit: the mean over its tokens, their max over 100 tokens), "
                "'mean' or 'max'"})
    prefixes: int = field(default=10, metadata={
        "help": "generated context prefixes each edit is also trained under (0..10; EasyEdit 10)"})
    irrelevant_samples: int = field(default=1, metadata={
        "help": "irrelevant texts per edit, drawn from the corpus (see irrelevant_file) (>= 0; EasyEdit 1)"})
    contrast_subject: int = field(default=0, metadata={
        "help": "irrelevant copies of each edit prompt with its subject's letters scrambled (>= 0; ours)"})
    max_irrelevant_tokens: int = field(default=32, metadata={"help": "truncate irrelevant texts (>= 2)"})
    score_tokens: str = field(default="all", metadata={"choices": SCORE_TOKENS, 
        "help": "tokens of an edit row whose activation score the margin loss pushes up: 'all' (the paper: "
                "the mean over the row) or 'subject' (EasyEdit's act_mask: the subject's tokens, the row's "
                "other tokens joining the irrelevant side; rows without a subject use all tokens). "
                "Routing and its threshold always use the whole row, as in both"})
    irrelevant_file: str | None = field(default=None, metadata={
        "help": "text file, one sentence per line, for Δ_irr; default: the workbench corpus (the bundled "
                "world's fact sentences and filler, as for ROME/MEMIT statistics), else built-in sentences"})

    def __post_init__(self):
        check_layer_value(self.layer)
        check_number(self.steps, "steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        check_number(self.lr, "lr", "> 0 (SGD learning rate)", lambda v: v > 0)
        for name in ("alpha", "beta", "gamma", "early_stop_loss", "weight_decay"):
            check_number(getattr(self, name), name, ">= 0", lambda v: v >= 0)
        check_number(self.margin_scale, "margin_scale", "> 0", lambda v: v > 0)
        check_number(self.mask_ratio, "mask_ratio", "in (0, 1] (share of weights a shard trains)", lambda v: 0 < v <= 1)
        for name in ("shard_size", "merge_every", "mask_every"):
            setattr(self, name, _optional_count(getattr(self, name), name))
        if self.merge_every and (not self.shard_size or self.merge_every % self.shard_size):
            raise InputError(f"must be a multiple of shard_size ({self.shard_size}); got {self.merge_every}",
                             field="merge_every")
        check_number(self.ties_density, "ties_density", "in (0, 1]", lambda v: 0 < v <= 1)
        if self.norm_constraint is not None:
            check_number(self.norm_constraint, "norm_constraint", ">= 0 (0 or None = no clamp)", lambda v: v >= 0)
        check_number(self.act_ratio, "act_ratio", "in (0, 1]", lambda v: 0 < v <= 1)
        check_bool(self.retrieve, "retrieve")
        if self.retrieve and not self.shard_size:
            raise InputError("retrieve mode keeps one memory per shard: give shard_size", field="retrieve")
        check_choice(self.stop, "stop", STOPS)
        check_choice(self.threshold_from, "threshold_from", THRESHOLD_FROM)
        check_choice(self.target_loss, "target_loss", TARGET_LOSSES)
        check_choice(self.score, "score", SCORES)
        check_choice(self.score_tokens, "score_tokens", SCORE_TOKENS)
        check_choice(self.route, "route", ROUTES)
        check_number(self.prefixes, "prefixes", f"an integer in 0..{MAX_PREFIXES}", lambda v: 0 <= v <= MAX_PREFIXES,
                     integer=True)
        check_number(self.contrast_subject, "contrast_subject", "an integer >= 0", lambda v: v >= 0, integer=True)
        check_number(self.irrelevant_samples, "irrelevant_samples", "an integer >= 0", lambda v: v >= 0, integer=True)
        check_number(self.max_irrelevant_tokens, "max_irrelevant_tokens", "an integer >= 2", lambda v: v >= 2, integer=True)

    def derive(self, adapter) -> "WISEHParams":
        """Fill `layer` from the model (~80% depth) and check it is inside the model."""
        return dataclasses.replace(self, layer=resolve_layer(adapter, self.layer))


@dataclass
class WISETunedHParams(WISEHParams):
    """`wise-tuned`: our settings (see the module doc); every field is one of `wise`'s options.

    Example:
        >>> hp = WISETunedHParams()
        >>> hp.score, hp.shard_size, hp.mask_every, hp.prefixes, hp.stop, hp.threshold_from
        ('linear', None, 1, 0, 'margins', 'final')
    """
    steps: int = field(default=25, metadata={"help": "max SGD steps per edit (1..10000); see stop"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate (> 0)"})
    weight_decay: float = field(default=0.0, metadata={"help": "SGD weight decay on the full side weight (>= 0)"})
    margin_scale: float = field(default=0.1, metadata={
        "help": "multiplies α, β, γ (> 0); scores ||Δ a|| are ~13 per token on the shipped model, where 0.1 works"})
    mask_ratio: float = field(default=0.05, metadata={"help": "share of weights an edit trains, ρ (0, 1]"})
    shard_size: int | None = field(default=None, metadata={"help": "edits per shard; None = one shard for ever"})
    merge_every: int | None = field(default=None, metadata={"help": "merge saved shards every this many edits"})
    mask_every: int | None = field(default=1, metadata={"help": "a new random gradient mask every this many edits"})
    ties_density: float = field(default=1.0, metadata={"help": "TIES trim density of merges (0, 1]"})
    stop: str = field(default="margins", metadata={"choices": STOPS, "help": "'margins' (ours) or 'loss' (EasyEdit)"})
    early_stop_loss: float = field(default=0.01, metadata={"help": "the loss bound of `stop` (>= 0)"})
    threshold_from: str = field(default="final", metadata={"choices": THRESHOLD_FROM, "help": "'final' (ours) or 'last_pass' (EasyEdit)"})
    target_loss: str = field(default="mean", metadata={"choices": TARGET_LOSSES, "help": "'mean' over target tokens or 'easyedit'"})
    score: str = field(default="linear", metadata={"choices": SCORES, "help": "'linear' ||Δ a|| or 'act' (EasyEdit)"})
    route: str = field(default="mean", metadata={"choices": ROUTES, "help": "'mean', 'max' or 'auto' (EasyEdit)"})
    prefixes: int = field(default=0, metadata={"help": "generated context prefixes (0..10)"})
    irrelevant_samples: int = field(default=8, metadata={"help": "irrelevant corpus texts per edit (>= 0)"})
    contrast_subject: int = field(default=3, metadata={
        "help": "irrelevant copies of each edit prompt with its subject's letters scrambled (>= 0)"})


@register_editor
class WISEEditor(Editor):
    """WISE: side memory + activation router + knowledge sharding with TIES merging.

    Example:
        >>> ed = WISEEditor(WISEHParams(steps=30))                           # doctest: +SKIP
        >>> for r in requests: ed.edit(EditContext(model, tok, adapter), [r]) # doctest: +SKIP
    """
    name = "wise"
    # Every edit reads and rewrites the shared shard/router buffers, so one edit out of the
    # middle cannot be reverted exactly: single_revert is False.
    capabilities = Capabilities(batch=True, sequential=True, forget=False, single_revert=False)
    hparams_class = WISEHParams

    def effective_hparams(self, ctx: EditContext, hp: WISEHParams) -> WISEHParams:
        """A memory already in place fixed its layer, shards, routing, scores and prefixes: those run."""
        mem = getattr(ctx.model, ATTR, None)
        if mem is None:
            return hp
        return dataclasses.replace(hp, **{k: getattr(mem, k) for k in MEMORY_FIELDS}, prefixes=len(mem.prefixes))

    def run(self, ctx: EditContext, batch: Batch, hp: WISEHParams) -> Patch:
        mem = getattr(ctx.model, ATTR, None)
        first = mem is None
        if first:
            w = ctx.adapter.weight(ctx.adapter.mlp_out(hp.layer))  # (out, in)
            prefixes = generate_prefixes(ctx.model, ctx.tokenizer, hp.prefixes)  # from the model before any WISE edit
            mem = WISEMemory(hp.layer, w.shape[0], w.shape[1], hp.act_ratio, hp.retrieve, w.dtype, hp.route,
                             hp.score, hp.shard_size, hp.merge_every, hp.ties_density, prefixes)
            mem.to(w.device)
            mem.install(ctx.model, ctx.adapter)
            ctx.on_error(lambda: mem.uninstall(ctx.model))
        else:
            rec = ctx.recorder([f"{ATTR}.{k}" for k, _ in mem.named_buffers()])
        rng = random.Random(ctx.seed * 7919 + int(mem.counts[0]))
        data = build_batch(ctx.tokenizer, list(batch), hp, rng, irrelevant_pool(hp.irrelevant_file), mem.prefixes)
        # The template seeded torch's RNG from ctx.seed just before run; nothing above draws from it.
        stats = train_edit(ctx.model, ctx.adapter, mem, data, hp, ctx.seed, len(batch))
        meta = {**stats, "edits_total": int(mem.counts[0])}
        if first:
            return Patch([], [WISEAttachment.of(mem)], meta)
        return rec.patch(meta=meta)


@register_editor
class WISETunedEditor(WISEEditor):
    """WISE with our settings (`WISETunedHParams`). Shares the model's WISE memory with `wise`
    (the first edit fixes it).

    Example:
        >>> ed = WISETunedEditor()                                             # doctest: +SKIP
        >>> for r in requests: ed.edit(EditContext(model, tok, adapter), [r])   # doctest: +SKIP
    """
    name = "wise-tuned"
    hparams_class = WISETunedHParams
