"""`prune`: forget by silencing the MLP neurons (or weights) that are specific to the forget set.

Two papers, one idea: what a model memorized lives in a small set of MLP units that fire on
the memorized data and hardly on anything else, so deleting those units removes the memory
and little besides.

- Pochinkov & Schoots 2024, "Dissecting language models: machine unlearning via selective
  pruning" (github.com/nickypro/selective-pruning). For every feed-forward neuron an
  importance I(D) is measured on a forget and a retain dataset -- here I_abs, the mean
  absolute activation over the tokens of D -- and neurons are scored by
  `I_forget / (I_retain + eps)` (`scoring="ratio"`). The top fraction of all neurons is
  pruned, the statistics are re-collected on the pruned model, and the loop repeats until the
  forget performance has dropped enough. The paper collects statistics over *all* tokens of
  its forget/retain texts; that is `tokens="all"`.
- Chavhan et al. 2024, "Memorized images in diffusion models share a subspace that can be
  located and deleted" (`scoring="wxa"`, weight granularity, one shot as in the paper).
  Weights are scored Wanda-style, |W_ij| * ||x_j||_2 over tokens, where each token's
  activation vector x is first normalised to unit length; in every output row the top
  `wxa_top` (10%) of entries by the memorized set's score are candidates, and a candidate is
  pruned only where its memorized score beats the baseline's score of the same entry. The
  baseline is the empty prompt (`wxa_baseline="empty"`: the BOS token alone, the LM's
  counterpart of the unconditional prompt) or the retain set (`"retain"`). Their "shared
  subspace" check -- the units chosen for disjoint halves of the memorized set overlap
  strongly -- is reported here as `patch.meta["iou"]`.
- `scoring="zscore"`: (mean_forget - mean_retain) / (std_retain + eps) of |activation|, a
  common contrast score.
- `scoring="nemo"`: NeMo (Hintersdorf et al. 2024, "Finding NeMo: localizing neurons
  responsible for memorization"), made for memorized strings and localised item by item. For
  each forget request, a neuron's mean |activation| on it is z-scored against the spread of
  the same statistic over the retain texts (the out-of-distribution test); the threshold is
  lowered through `nemo_thresholds` until silencing the neurons above it verifiably stops the
  model reproducing *that* item (teacher-forced suffix token accuracy <= `nemo_acc`); with
  `nemo_refine`, each of those neurons is switched back on in turn, lowest z first, and stays
  on if the item stays forgotten. The pruned set is the union of the items' sets, or with
  `nemo_combine="shared"` the neurons found for at least two items. Ours, not NeMo's:
  `nemo_spare` then switches the combined set's neurons back on one at a time, those the
  retain answers depend on most first (first-order, as `taylor`), wherever no forgotten item
  comes back -- localising item by item leaves neurons no item needs once the others are
  silenced, and a small model's neurons also carry general skills.
- `scoring="taylor"` (the default; our addition, not in either paper): a neuron's score is the
  first-order estimate of how much silencing it lowers the forget answers' log-odds, minus how
  much it changes the retain answers' (|.|), from a * d(log-odds)/da summed over positions
  (Molchanov et al. 2019's Taylor importance, made contrastive). Log-odds, not log-prob,
  because a memorized answer has p ~ 1 where the log-prob gradient vanishes. It is the default
  because the activation-statistics scores did not localize the shipped world's facts (the
  README's "Unlearning" section quotes the measurements).

Forget texts are each request's prefix + suffix; retain texts are the requests' retain probes
(prompt + answer), tokenized exactly as the evaluator scores them (`scoring.encode_pairs`).
Deliberate difference: the default `tokens="answer"` takes the activation statistics only at
the positions that *predict* the answer (the last prompt token and the answer's tokens but its
last), where recall of a short fact happens; `tokens="all"` is the paper's choice. `taylor`
always sums over every position (silencing a neuron removes
it everywhere). Another addition, `guard` (on by default): a step that lowered neither the
forget token accuracy nor the answers' log-prob is undone and its units are not tried again,
so the loop never keeps a step that made the forget set *more* likely. `preset="selective"`
takes the reference code's settings instead (`PRESETS`): ratio of mean |activation| over all
tokens, 2% of the neurons per step, statistics re-collected after each, no guard and no early
stop (10 steps unless `max_steps` says otherwise).

A neuron is pruned by zeroing its column of the MLP output projection, so it is silent
whatever the activation function (its activation still exists, it just reaches nothing);
`wxa` zeroes single entries of the same matrix. The patch is those zeroed columns/entries
(`WeightRecorder` keeps only changed columns). Scores for the UI histogram (per neuron, first
step, rounded) and the IoU are in `patch.meta` (`iou` is None with fewer than two forget
requests or nothing pruned; it is computed on the unpruned model for as many units as were
pruned in all, halves drawn with the edit's seed).

Example:
    >>> reqs = with_retain(load_requests("data/benchmarks/forget_people.jsonl"),
    ...                    load_probes("data/benchmarks/retain.jsonl"))           # doctest: +SKIP
    >>> patch = PruneEditor(PruneHParams(scoring="ratio", fraction=0.005)).edit(ctx, reqs)  # doctest: +SKIP
    >>> patch.meta["pruned_total"], patch.meta["iou"]  # neurons zeroed, IoU in [0, 1]  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

import torch

from workbench.core.errors import InputError
from workbench.core.patch import Patch
from workbench.editing.contract import (Batch, Capabilities, Chart, EditContext, Editor, HParams, check_bool, check_choice,
                                        check_number, resolve_layers)
from workbench.editing.registry import register_editor
from workbench.eval.scoring import encode_pairs, pad_id, right_pad, score_answers

SCORINGS = ("ratio", "zscore", "wxa", "taylor", "nemo")
COMBINES = ("union", "shared")
TOKENS = ("answer", "all")
BASELINES = ("empty", "retain")
# The reference code's settings (nickypro/selective-pruning: ff_frac 0.02, mean |a| over every
# token, recalculate_activations); max_steps is only a default there, the user may set it.
PRESETS = {"selective": {"scoring": "ratio", "tokens": "all", "fraction": 0.02, "restat": True, "guard": False,
                         "target": None}}
PRESET_STEPS = {"selective": 10}


@dataclass
class PruneHParams(HParams):
    """Hyperparameters of `prune`.

    Example:
        >>> PruneHParams(scoring="zscore", k=10).k
        10
        >>> PruneHParams(scoring="magnitude")
        Traceback (most recent call last):
        ...
        workbench.core.errors.InputError: field "scoring": must be one of ratio, zscore, wxa, taylor; got 'magnitude'
    """
    scoring: str = field(default="taylor", metadata={"choices": SCORINGS, 
        "help": "'taylor': first-order drop of the forget answers' log-odds minus that of the retain "
                "answers; 'ratio': I_forget/(I_retain+eps) of mean |activation| (Pochinkov & Schoots); "
                "'zscore': (mean_f-mean_r)/(std_r+eps); 'wxa': |weight| x norm of unit-length activations, "
                "each row's top wxa_top that beat the baseline, weight granularity, one shot (Chavhan et al.)"})
    tokens: str = field(default="answer", metadata={"choices": TOKENS, 
        "help": "positions whose activations count: 'answer' (those predicting the answer) or 'all' "
                "(every token, as the paper)"})
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "MLP layers to prune (comma list, negative from the end); default: all"})
    k: int | None = field(default=None, metadata={
        "help": "neurons pruned per step over all layers (not wxa, which takes wxa_top of each row once); "
                "overrides fraction (>= 1)"})
    fraction: float = field(default=0.005, metadata={
        "help": "share of the units pruned per step when k is not set (0 < f <= 1)"})
    max_steps: int = field(default=40, metadata={"help": "most pruning steps (1..10000)"})
    target: float | None = field(default=0.1, metadata={
        "help": "stop once forget token accuracy <= target x its value before (and the answers' "
                "log-prob fell); None = run all max_steps steps (0..1)"})
    eps: float = field(default=1e-3, metadata={"help": "added to the retain statistic in ratio/zscore (> 0)"})
    restat: bool = field(default=True, metadata={
        "help": "re-collect the statistics on the pruned model after each step (as the paper)"})
    guard: bool = field(default=True, metadata={
        "help": "undo a step that lowered neither the forget token accuracy nor the answers' log-prob "
                "(its units are not tried again)"})
    preset: str = field(default="none", metadata={
        "help": "'selective': the reference code's settings (ratio, all tokens, 2% steps, no guard, no early "
                "stop, 10 steps); the fields it sets cannot be set as well", "choices": ("none", *PRESETS)})
    wxa_top: float = field(default=0.1, metadata={
        "help": "wxa: share of each output row's entries (by memorized score) that are candidates (0 < f <= 1)",
        "applies_when": {"scoring": ["wxa"]}})
    wxa_baseline: str = field(default="empty", metadata={
        "help": "wxa: the scores a candidate must beat, of the empty prompt (as the paper) or of the retain set",
        "choices": BASELINES, "applies_when": {"scoring": ["wxa"]}})

    nemo_thresholds: tuple[float, ...] = field(default=(6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0), metadata={
        "help": "nemo: z-score thresholds tried per item, high to low", "applies_when": {"scoring": ["nemo"]}})
    nemo_acc: float = field(default=0.5, metadata={
        "help": "nemo: an item counts as forgotten at this suffix token accuracy or below (0..1)",
        "applies_when": {"scoring": ["nemo"]}})
    nemo_refine: bool = field(default=True, metadata={
        "help": "nemo: switch each found neuron back on if the item stays forgotten without it",
        "applies_when": {"scoring": ["nemo"]}})
    nemo_combine: str = field(default="union", metadata={
        "help": "nemo: prune the union of the items' neurons, or those 'shared' by two or more items",
        "choices": COMBINES, "applies_when": {"scoring": ["nemo"]}})
    nemo_spare: bool = field(default=False, metadata={
        "help": "nemo: after combining, switch each chosen neuron back on, those the retain set leans on most "
                "first, wherever no item the set forgets comes back",
        "applies_when": {"scoring": ["nemo"]}})

    def __post_init__(self):
        check_choice(self.preset, "preset", ("none", *PRESETS))
        check_choice(self.nemo_combine, "nemo_combine", COMBINES)
        check_bool(self.nemo_spare, "nemo_spare")
        check_number(self.nemo_acc, "nemo_acc", "in [0, 1]", lambda v: 0 <= v <= 1)
        check_bool(self.nemo_refine, "nemo_refine")
        if not self.nemo_thresholds:
            raise InputError("needs at least one threshold", field="nemo_thresholds")
        for v in self.nemo_thresholds:
            check_number(v, "nemo_thresholds", "real numbers", lambda x: True)
        if self.preset != "none":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in PRESETS[self.preset].items():
                if getattr(self, name) not in (defaults[name], value):
                    raise InputError(f"is set by preset {self.preset!r} (to {value!r}); leave it out or use "
                                     f"preset=none", field=name)
                setattr(self, name, value)
            if self.max_steps == defaults["max_steps"]:
                self.max_steps = PRESET_STEPS[self.preset]
        check_choice(self.scoring, "scoring", SCORINGS)
        check_choice(self.wxa_baseline, "wxa_baseline", BASELINES)
        check_number(self.wxa_top, "wxa_top", "in (0, 1]", lambda v: 0 < v <= 1)
        check_choice(self.tokens, "tokens", TOKENS)
        if self.layers is not None:
            if isinstance(self.layers, int) and not isinstance(self.layers, bool):
                self.layers = (self.layers,)
            if not isinstance(self.layers, (tuple, list)) or not self.layers or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in self.layers):
                raise InputError(f"must be a non-empty list of layer indices or None; got {self.layers!r}",
                                 field="layers")
            self.layers = tuple(self.layers)
        if self.k is not None:
            check_number(self.k, "k", "an integer >= 1 (or None to use fraction)", lambda v: v >= 1, integer=True)
        check_number(self.fraction, "fraction", "in (0, 1]", lambda v: 0 < v <= 1)
        check_number(self.max_steps, "max_steps", "an integer in 1..10000", lambda v: 1 <= v <= 10000, integer=True)
        if self.target is not None:
            check_number(self.target, "target", "in [0, 1] or None", lambda v: 0 <= v <= 1)
        check_number(self.eps, "eps", "> 0", lambda v: v > 0)
        for name in ("restat", "guard"):
            check_bool(getattr(self, name), name)

    def derive(self, adapter) -> "PruneHParams":
        """Fill `layers` (all MLP layers) and check explicit ones fit the model."""
        return dataclasses.replace(self, layers=resolve_layers(adapter, self.layers))


# ---------------------------------------------------------------------------- statistics

@dataclass
class _Stats:
    """Per-text sums of neuron activations, so any subset of texts gives its own statistics."""
    s1: torch.Tensor   # (texts, layers, d_ff) sum over counted tokens of |a|
    s2: torch.Tensor   # (texts, layers, d_ff) sum of a^2
    n: torch.Tensor    # (texts,) counted tokens
    s3: torch.Tensor   # (texts, layers, d_ff) sum over all positions of a * dlogodds(answer)/da (taylor)
    s4: torch.Tensor   # (texts, layers, d_ff) sum over counted tokens of (a / ||a||)^2, a per token (wxa)

    def normalised_rms(self, rows=None) -> torch.Tensor:
        """(layers, d_ff) root mean square over the counted tokens of each token's unit-length
        activation vector: the ||x_j|| of wxa's Wanda score, comparable across sets of any size."""
        s4, n = (self.s4, self.n) if rows is None else (self.s4[rows], self.n[rows])
        return (s4.sum(0) / n.sum().clamp(min=1)).sqrt()

    def moments(self, rows=None):
        """(mean |a|, mean a^2) per neuron over the tokens of `rows` (all texts if None)."""
        s1, s2, n = (self.s1, self.s2, self.n) if rows is None else (self.s1[rows], self.s2[rows], self.n[rows])
        total = n.sum().clamp(min=1)
        return s1.sum(0) / total, s2.sum(0) / total  # each (layers, d_ff)


def _collect(model, adapter, layers, pairs, tokens: str, pad_id: int, taylor: bool = False,
             batch_size: int = 64) -> _Stats:
    """Run `pairs` (prompt ids, answer ids) through the model and sum each text's activations.

    With `taylor`, also sum a * d(answer log-odds)/da over every position: the first-order
    change of the answers' log-odds if the neuron were silenced is minus that sum.
    """
    device = next(model.parameters()).device
    width = max(adapter.num_neurons(i) for i in layers)
    s1 = torch.zeros(len(pairs), len(layers), width, dtype=torch.float64)
    s2, s3, s4 = torch.zeros_like(s1), torch.zeros_like(s1), torch.zeros_like(s1)
    n = torch.zeros(len(pairs), dtype=torch.float64)
    current: dict = {}

    def hook(li):
        def fn(acts):  # acts: (batch, seq, d_ff)
            a = acts.detach().double() * current["mask"][..., None]  # (batch, seq, d_ff); uncounted -> 0
            s1[current["rows"], li, :a.shape[-1]] = a.abs().sum(1).cpu()
            s2[current["rows"], li, :a.shape[-1]] = (a * a).sum(1).cpu()
            unit = a / a.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (batch, seq, d_ff); uncounted rows stay 0
            s4[current["rows"], li, :a.shape[-1]] = (unit * unit).sum(1).cpu()
            if taylor:  # a leaf that carries the gradient; the forward is unchanged
                current["leaves"][li] = leaf = acts.detach().requires_grad_(True)
                return leaf
            return None
        return fn

    handles = [adapter.hook_mlp_neurons(i, hook(li)) for li, i in enumerate(layers)]
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            ids, mask = right_pad([p + a for p, a in chunk], pad_id)  # (batch, seq)
            count = mask.clone().double()
            if tokens == "answer":  # positions len(p)-1 .. len(p)+len(a)-2 predict the answer
                count.zero_()
                for r, (p, a) in enumerate(chunk):
                    count[r, len(p) - 1:len(p) + len(a) - 1] = 1
            current.update(rows=torch.arange(start, start + len(chunk)), mask=count.to(device), leaves={})
            n[start:start + len(chunk)] = count.sum(1)
            with torch.set_grad_enabled(taylor):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                if taylor:
                    leaves = [current["leaves"][li] for li in range(len(layers))]
                    grads = torch.autograd.grad(_answer_logodds(logits, chunk), leaves)
                    for li, (x, g) in enumerate(zip(leaves, grads)):  # each (batch, seq, d_ff)
                        s3[current["rows"], li, :x.shape[-1]] = (x.detach() * g).double().sum(1).cpu()
    finally:
        for h in handles:
            h.remove()
    return _Stats(s1, s2, n, s3, s4)


def _answer_logodds(logits: torch.Tensor, chunk) -> torch.Tensor:
    """Summed log-odds, log p - log(1 - p), of every answer token in the batch (a scalar).

    Log-odds rather than log-prob: a well-learned answer has p ~ 1, where the log-prob's
    gradient vanishes and a first-order estimate would call every neuron harmless to it.
    """
    total = logits.new_zeros((), dtype=torch.float32)
    for r, (p, a) in enumerate(chunk):
        pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=logits.device)  # positions predicting a
        row = logits[r, pos].float()                                                # (len(a), vocab)
        tgt = torch.tensor(a, device=logits.device)
        own = row.gather(1, tgt[:, None])[:, 0]                                     # (len(a),)
        others = row.scatter(1, tgt[:, None], float("-inf")).logsumexp(1)           # (len(a),)
        total = total + (own - others).sum()
    return total


def _neuron_scores(scoring: str, forget: _Stats, retain: _Stats, eps: float, rows=None) -> torch.Tensor:
    """(layers, d_ff) forget-specificity of every neuron; higher = prune first."""
    if scoring == "taylor":
        # expected drop of the answers' log-odds (per text) when the neuron is silenced:
        # forget drop minus retain damage (|.|: any change to a retained answer counts)
        fs = forget.s3 if rows is None else forget.s3[rows]
        return fs.mean(0) - retain.s3.abs().mean(0)
    f1, _ = forget.moments(rows)
    r1, r2 = retain.moments()
    if scoring == "zscore":
        std = (r2 - r1 * r1).clamp(min=0).sqrt()  # std of |a| over retain tokens
        return (f1 - r1) / (std + eps)
    return f1 / (r1 + eps)  # ratio; for wxa this is the per-column factor shown in the histogram


def _pick_neurons(scores: torch.Tensor, pruned: torch.Tensor, k: int) -> torch.Tensor:
    """Top-`k` not yet pruned neurons over all layers: a (layers, d_ff) bool mask."""
    s = scores.masked_fill(pruned, -math.inf).flatten()
    k = min(k, int((~pruned).sum()))
    chosen = torch.zeros_like(s, dtype=torch.bool)
    chosen[s.topk(k).indices] = True
    return chosen.view_as(pruned)


def _pick_weights(weights, forget: _Stats, base_rms: torch.Tensor, top: float, rows=None) -> list[torch.Tensor]:
    """Per layer, Chavhan et al.'s selection: in each output row, the top `top` share of entries
    by the memorized score |W_ij| * rms_j (unit-length token activations) are candidates; a
    candidate is kept for pruning where it beats the baseline's score |W_ij| * base_rms_j.

    Each mask is (hidden, d_ff) like the (out, in) view of the output projection.
    """
    mem_rms = forget.normalised_rms(rows)  # (layers, d_ff)
    out = []
    for li, w in enumerate(weights):
        d = w.shape[1]
        absw = w.detach().abs().double().cpu()           # (hidden, d_ff)
        s_mem = absw * mem_rms[li, :d]                   # (hidden, d_ff)
        s_base = absw * base_rms[li, :d]
        per_row = max(1, math.ceil(top * d))
        cand = torch.zeros_like(s_mem, dtype=torch.bool)
        cand.scatter_(1, s_mem.topk(per_row, dim=1).indices, True)  # top entries of every row
        out.append(cand & (s_mem > s_base))
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


# ---------------------------------------------------------------------------- editor

@register_editor
class PruneEditor(Editor):
    """Zero the MLP neurons (or weights) most specific to the forget set against a retain set.
    See the module docstring for the scoring, the iteration and what is recorded.

    Example:
        >>> patch = PruneEditor().edit(ctx, forget_requests)                 # doctest: +SKIP
        >>> patch.meta["steps"], len(patch.meta["scores"])                   # doctest: +SKIP
        (3, 4)
    """
    name = "prune"
    capabilities = Capabilities(batch=True, sequential=True, forget=True, single_revert=False)
    hparams_class = PruneHParams

    @classmethod
    def check_requests(cls, requests: list, adapter) -> None:
        if not any(r.retain for r in requests):
            raise InputError("prune contrasts the forget set with a retain set, and none was given: attach "
                             "retain probes (e.g. `with_retain(requests, load_probes(...))` or --retain)",
                             field="retain")

    @classmethod
    def charts(cls, patch) -> list[Chart]:
        """The first step's per-neuron forget-vs-retain scores, per layer, and those of the
        neurons finally pruned (the tail the editor cut)."""
        meta = patch.meta
        if "scores" not in meta:
            return []
        series = {f"layer {k}": v for k, v in meta["scores"].items()}
        pruned = [v[i] for k, v in meta["scores"].items() for i in meta.get("pruned", {}).get(k, []) if i < len(v)]
        if pruned and meta.get("scoring") != "wxa":
            series["pruned"] = pruned
        return [Chart(title=f"{meta.get('pruned_total')} unit(s) pruned in {meta.get('steps')} step(s)",
                      kind="histogram", series=series, x_label=f"score ({meta.get('scoring')})", y_label="neurons",
                      log_y=True)]

    def run(self, ctx: EditContext, batch: Batch, hp: PruneHParams) -> Patch:
        retain = sorted({(p.prompt, p.answer) for r in batch for p in r.retain})
        retain_pairs = [pa for pa in encode_pairs(ctx.tokenizer, [p for p, _ in retain], [a for _, a in retain])
                        if pa[0] and pa[1]]
        modules = [ctx.adapter.mlp_out(i) for i in hp.layers]
        rec = ctx.recorder([ctx.adapter.param_name(m) for m in modules])
        run = _nemo if hp.scoring == "nemo" else _prune
        return rec.patch(meta=run(ctx, hp, modules, list(batch.pairs), retain_pairs))


class _Silenced:
    """Inside the block, the neurons of `mask` ((layers, width) bool, the editor's layer order)
    output nothing: a trial of pruning them that leaves the weights untouched."""

    def __init__(self, adapter, layers, mask: torch.Tensor):
        self.adapter, self.layers, self.mask = adapter, layers, mask

    def __enter__(self):
        def hook(li):
            keep = (~self.mask[li]).float()  # (width,)
            return lambda acts: acts * keep[:acts.shape[-1]].to(acts)
        self.handles = [self.adapter.hook_mlp_neurons(i, hook(li)) for li, i in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _silenced_token_accuracy(model, adapter, layers, pairs, mask: torch.Tensor, pad: int) -> list[float]:
    """Teacher-forced answer token accuracy of each pair with the neurons of `mask` silenced."""
    with torch.no_grad(), _Silenced(adapter, layers, mask):
        return [s.token_accuracy for s in score_answers(model, pairs, pad_id=pad)]


def _nemo(ctx: EditContext, hp: PruneHParams, modules, forget_pairs, retain_pairs) -> dict:
    """NeMo's localisation (module docstring), then the found neurons' output columns zeroed."""
    model, adapter, layers = ctx.model, ctx.adapter, hp.layers
    pad = pad_id(ctx.tokenizer)
    weights = [adapter.weight(m) for m in modules]  # (hidden, d_ff) views
    width = max(w.shape[1] for w in weights)
    real = torch.zeros(len(weights), width, dtype=torch.bool)  # narrower layers' padding is never chosen
    for li, w in enumerate(weights):
        real[li, :w.shape[1]] = True
    forget = _collect(model, adapter, layers, forget_pairs, hp.tokens, pad)
    retain = _collect(model, adapter, layers, retain_pairs, hp.tokens, pad)
    f_mean = forget.s1 / forget.n.clamp(min=1)[:, None, None]  # (items, layers, width): mean |a| per item
    r_mean = retain.s1 / retain.n.clamp(min=1)[:, None, None]  # (texts, layers, width)
    z = (f_mean - r_mean.mean(0)) / (r_mean.std(0) + hp.eps)  # (items, layers, width)

    def token_acc(pair, mask) -> float:
        return _silenced_token_accuracy(model, adapter, layers, [pair], mask, pad)[0]

    none = torch.zeros_like(real)
    items, chosen_sets = [], []
    for i, pair in enumerate(forget_pairs):
        acc0 = token_acc(pair, none)
        row = {"item": i, "acc_before": round(acc0, 4), "theta": None, "neurons": 0, "forgotten": acc0 <= hp.nemo_acc}
        items.append(row)
        if acc0 <= hp.nemo_acc:
            continue  # not reproduced: nothing of it to localise
        found = None
        for theta in hp.nemo_thresholds:
            cand = (z[i] > theta) & real
            if cand.any() and token_acc(pair, cand) <= hp.nemo_acc:
                found, row["theta"] = cand, theta
                break
        if found is None:
            continue
        if hp.nemo_refine:
            cells = found.nonzero().tolist()
            for li, j in sorted(cells, key=lambda c: float(z[i, c[0], c[1]])):  # weakest outliers first
                found[li, j] = False
                if token_acc(pair, found) > hp.nemo_acc:
                    found[li, j] = True  # needed: the item comes back without it
        row.update(neurons=int(found.sum()), forgotten=True)
        chosen_sets.append(found)
    counts = torch.stack(chosen_sets).sum(0) if chosen_sets else torch.zeros(len(weights), width)
    selected = counts >= (2 if hp.nemo_combine == "shared" else 1)  # (layers, width)
    spared = _nemo_spare(model, adapter, layers, hp, forget_pairs, retain_pairs, selected, pad) \
        if hp.nemo_spare and selected.any() else 0
    with torch.no_grad():
        for li, w in enumerate(weights):
            w[:, selected[li, :w.shape[1]].nonzero().flatten().to(w.device)] = 0
    scores = z.max(0).values  # each neuron's strongest outlier score over the items: the histogram
    return {
        "layers": list(layers), "steps": 1, "items": items, "combine": hp.nemo_combine,
        "items_localised": len(chosen_sets), "pruned_total": int(selected.sum()), "spared": spared,
        "pruned": {str(i): selected[li, :w.shape[1]].nonzero().flatten().tolist()
                   for li, (i, w) in enumerate(zip(layers, weights))},
        "scores": {str(i): [float(f"{v:.4g}") for v in scores[li, :w.shape[1]].tolist()]
                   for li, (i, w) in enumerate(zip(layers, weights))},
        # the shared-subspace check: how much the neurons of disjoint halves of the items overlap
        "iou": _iou(*(torch.stack(h).any(0) for h in (chosen_sets[0::2], chosen_sets[1::2])))
        if len(chosen_sets) >= 2 else None,
    }


def _nemo_spare(model, adapter, layers, hp: PruneHParams, forget_pairs, retain_pairs, selected: torch.Tensor,
                pad: int) -> int:
    """Give back what the retain set needs: NeMo localises each item alone, so the combined set
    can hold neurons that no item needs once the others are silenced, and some of them carry
    general skills. Each chosen neuron, in order of the retain answers' first-order dependence
    on it (|a * d log-odds / da| summed over the retain texts), is switched back on and stays
    on if every item the set forgets stays forgotten. `selected` (layers, width) is updated in
    place; returns how many neurons were spared."""
    harm = _collect(model, adapter, layers, retain_pairs, hp.tokens, pad, taylor=True).s3.abs().sum(0)  # (layers, width)

    def forgotten(mask) -> list[bool]:
        return [a <= hp.nemo_acc for a in _silenced_token_accuracy(model, adapter, layers, forget_pairs, mask, pad)]

    must = forgotten(selected)
    spared = 0
    for li, j in sorted(selected.nonzero().tolist(), key=lambda c: -float(harm[c[0], c[1]])):
        selected[li, j] = False
        if all(now or not was for now, was in zip(forgotten(selected), must)):
            spared += 1
        else:
            selected[li, j] = True  # an item comes back without it
    return spared


def _forget_metric(model, pairs, pad_id) -> tuple[float, float]:
    """(teacher-forced token accuracy, mean answer log-prob) on the forget pairs."""
    scores = score_answers(model, pairs, pad_id=pad_id)
    return (sum(s.token_accuracy for s in scores) / len(scores),
            sum(sum(s.logprobs) for s in scores) / len(scores))


def _prune(ctx: EditContext, hp: PruneHParams, modules, forget_pairs, retain_pairs) -> dict:
    """The pruning loop, in place on `modules`' weights; returns what goes into patch.meta."""
    model, adapter = ctx.model, ctx.adapter
    pad = pad_id(ctx.tokenizer)
    weights = [adapter.weight(m) for m in modules]  # (hidden, d_ff) views sharing storage
    width = max(w.shape[1] for w in weights)
    # Padding columns of narrower layers count as already pruned so they are never chosen.
    pruned = torch.ones(len(modules), width, dtype=torch.bool) if hp.scoring != "wxa" else None
    if pruned is not None:
        for li, w in enumerate(weights):
            pruned[li, :w.shape[1]] = False
    wpruned = [torch.zeros(w.shape, dtype=torch.bool) for w in weights]  # wxa: tried (zeroed or skipped)
    zeroed = torch.zeros(len(modules), width, dtype=torch.bool)                # neurons actually silenced
    wzeroed = [torch.zeros(w.shape, dtype=torch.bool) for w in weights]
    units = sum(w.shape[1] for w in weights) if hp.scoring != "wxa" else min(w.numel() for w in weights)
    k = hp.k or max(1, round(hp.fraction * units))

    acc0, lp0 = _forget_metric(model, forget_pairs, pad)
    collect = lambda pairs: _collect(model, adapter, hp.layers, pairs, hp.tokens, pad,  # noqa: E731
                                     hp.scoring == "taylor")
    forget, retain = collect(forget_pairs), collect(retain_pairs)
    base_rms = None
    if hp.scoring == "wxa":  # what a candidate weight's memorized score must beat
        base = retain if hp.wxa_baseline == "retain" else _collect(
            model, adapter, hp.layers, [(_empty_prompt(ctx.tokenizer), [])], "all", pad)
        base_rms = base.normalised_rms()
    first = (forget, retain)
    originals = [w.detach().clone() for w in weights]  # the IoU check scores the unpruned weights
    acc, lp, steps, history = acc0, lp0, 0, []
    for steps in range(1, (1 if hp.scoring == "wxa" else hp.max_steps) + 1):  # wxa: one shot, as the paper
        if steps > 1 and hp.restat:
            forget, retain = collect(forget_pairs), collect(retain_pairs)
        saved = [w.detach().clone() for w in weights] if hp.guard else None
        with torch.no_grad():
            if hp.scoring == "wxa":
                chosen = _pick_weights(weights, forget, base_rms, hp.wxa_top)
                for w, c, tried in zip(weights, chosen, wpruned):
                    w[c.to(w.device)] = 0
                    tried |= c
            else:
                chosen = _pick_neurons(_neuron_scores(hp.scoring, forget, retain, hp.eps), pruned, k)
                for li, w in enumerate(weights):
                    cols = chosen[li, :w.shape[1]].nonzero().flatten()
                    w[:, cols.to(w.device)] = 0  # the neuron's output column: silent for any activation
                pruned |= chosen
        new_acc, new_lp = _forget_metric(model, forget_pairs, pad)
        kept = not hp.guard or new_acc < acc or new_lp < lp  # worse on neither count -> undo
        if kept:
            acc, lp = new_acc, new_lp
            if hp.scoring == "wxa":
                for z, c in zip(wzeroed, chosen):
                    z |= c
            else:
                zeroed |= chosen
        else:  # the step recalled no less and made the answers *more* likely: undo, never retry these
            with torch.no_grad():
                for w, before in zip(weights, saved):
                    w.copy_(before)
        history.append({"step": steps, "kept": kept, "forget_acc": round(new_acc, 4),
                        "forget_logprob": round(new_lp, 4)})
        done = hp.target is not None and acc <= hp.target * acc0 and lp < lp0
        exhausted = bool(pruned.all()) if pruned is not None else not any(c.any() for c in chosen)
        if done or exhausted:
            break
    if hp.scoring == "wxa":
        selected = wzeroed
        total = sum(int(c.sum()) for c in wzeroed)
    else:
        selected = [zeroed[li, :w.shape[1]] for li, w in enumerate(weights)]
        total = int(sum(int(s.sum()) for s in selected))
    f0, r0 = first
    scores = _neuron_scores("ratio" if hp.scoring == "wxa" else hp.scoring, f0, r0, hp.eps)
    return {
        "layers": list(hp.layers), "k_per_step": k, "steps": steps, "history": history,
        "forget_acc_before": acc0, "forget_acc_after": acc, "forget_logprob_before": lp0,
        "forget_logprob_after": lp,
        "reached_target": hp.target is not None and acc <= hp.target * acc0 and lp < lp0,
        "pruned_total": total,
        "pruned": {str(i): (s.any(0) if hp.scoring == "wxa" else s).nonzero().flatten().tolist()
                   for i, s in zip(hp.layers, selected)},
        # per-layer neuron scores of the first step, 4 significant digits: the UI's histogram
        "scores": {str(i): [float(f"{v:.4g}") for v in scores[li, :w.shape[1]].tolist()]
                   for li, (i, w) in enumerate(zip(hp.layers, weights))},
        "iou": _half_iou(hp, originals, f0, r0, total, ctx.seed, base_rms),
        **({"wxa_baseline": hp.wxa_baseline, "wxa_top": hp.wxa_top} if hp.scoring == "wxa" else {}),
    }


def _empty_prompt(tok) -> list[int]:
    """The empty prompt's ids: the tokenizer's BOS alone (or its end-of-text where it adds none)."""
    ids = tok("", add_special_tokens=True)["input_ids"]
    return ids or [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]


def _half_iou(hp: PruneHParams, weights, forget: _Stats, retain: _Stats, total: int, seed: int,
              base_rms: torch.Tensor | None = None) -> float | None:
    """IoU of the units selected (same count as pruned in all) for two disjoint random halves
    of the forget set, on the unpruned model's statistics: the 'shared subspace' check."""
    n = forget.n.numel()
    if n < 2 or total == 0:
        return None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    halves = [torch.tensor(sorted(order[:n // 2])), torch.tensor(sorted(order[n // 2:]))]
    if hp.scoring == "wxa":
        picks = [_pick_weights(weights, forget, base_rms, hp.wxa_top, rows=h) for h in halves]
        return _iou(torch.cat([p.flatten() for p in picks[0]]), torch.cat([p.flatten() for p in picks[1]]))
    width = forget.s1.shape[2]
    pad = torch.ones(len(weights), width, dtype=torch.bool)
    for li, w in enumerate(weights):
        pad[li, :w.shape[1]] = False
    picks = [_pick_neurons(_neuron_scores(hp.scoring, forget, retain, hp.eps, rows=h), pad, total) for h in halves]
    return _iou(picks[0], picks[1])
