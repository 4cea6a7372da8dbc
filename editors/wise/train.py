"""One WISE edit: train the current shard of the side memory, merge the shards, update the router.

Per step (the paper's objective): cross-entropy on the target tokens, read through the side
memory, plus the routing margin loss on the activation scores Δ (see `memory.py`):

    max(0, Δ_irr − α) + max(0, β − Δ_edit) + max(0, γ − (Δ_edit − Δ_irr))

Δ_edit is the score of each edit row (prompt + target; with `score_tokens="subject"` only its
subject's tokens, and its other tokens join the irrelevant rows, as EasyEdit's act_mask /
deact_mask), Δ_irr of each irrelevant row. Hinges are averaged over the
pairs/positions that violate them (as EasyEdit does), so satisfied margins cost nothing.
Gradients are masked to the shard's random subspace (ratio ρ) and the weights are clamped
to within `norm_constraint` of the main memory after each SGD step.

Irrelevant rows are (a) texts of the workbench's generic corpus (`editors.common.kv.default_corpus`:
the bundled world's fact sentences about other people, in the world's phrasings, and filler;
or the lines of `irrelevant_file`; `DEFAULT_IRRELEVANT` below without either), never one
naming the edited subject or quoting one of the request's locality probes, and (b) the edit
prompt with its subject's letters scrambled, a fake name of the same shape, which teaches the
router that the *subject* (not the template) calls for the side memory. Other people's facts
are what the side memory must leave alone, so they are the texts the α margin needs.

Why lower blocks are cached: nothing below the edited layer changes during an edit, so the
blocks below it run once; in each step they return their cached outputs (their `forward`
is swapped for the duration of the edit) and only the edited layer and those above run.
The activations entering the MLP-out projection are also constant, so Δ is computed from
one cached (batch, seq, d_ff) tensor.
"""
from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path

import torch
from peft.utils.merge_utils import ties

from workbench.eval.scoring import encode_pairs, pad_id, right_pad

from .memory import WISEMemory, row_mean

DEFAULT_IRRELEVANT = (
    "The weather was mild and the streets were quiet in the morning.",
    "A small boat drifted slowly along the river past the old mill.",
    "The market opened early and the bakery sold fresh bread.",
    "Children played in the park while the band rehearsed nearby.",
    "The museum added a new wing for paintings and old maps.",
    "Rain fell all night and the roads were wet at dawn.",
    "The library was closed for repairs during the winter.",
    "A train left the station and crossed the long bridge.",
    "The garden was full of roses and tall green hedges.",
    "The committee met on Tuesday to discuss the budget.",
    "Snow covered the hills and the lake froze in the cold.",
    "The factory was visited by many tourists in the spring.",
)


def irrelevant_pool(path: str | None) -> list[str]:
    """Texts for Δ_irr: the lines of `path` (one text per line), else the workbench's generic
    corpus (`editors.common.kv.default_corpus()`: the bundled world's fact sentences and filler, the
    text ROME/MEMIT take their statistics from), else the built-in sentences."""
    if not path:
        try:
            from editors.common.kv import default_corpus
            return default_corpus()
        except Exception:  # no bundled world (an installed wheel without data/): generic sentences
            return list(DEFAULT_IRRELEVANT)
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines or list(DEFAULT_IRRELEVANT)


def scramble(subject: str, rng: random.Random) -> str:
    """The subject with each word's letters shuffled (a fake name of the same shape).

    Example:
        >>> len(scramble("Ada Lovelace", random.Random(0)))
        12
    """
    words = []
    for w in subject.split(" "):
        chars = list(w.lower())
        for _ in range(5):
            rng.shuffle(chars)
            if "".join(chars) != w.lower() or len(set(chars)) < 2:
                break
        s = "".join(chars)
        words.append(s[:1].upper() + s[1:] if w[:1].isupper() else s)
    return " ".join(words)


def build_batch(tok, requests, hp, rng: random.Random, pool: list[str]):
    """The edit rows and the irrelevant rows, each right-padded on its own.

    Returns ((ids, mask, labels) of the edit rows, (ids, mask) of the irrelevant rows or None);
    labels (rows, seq) hold the target token position t must predict (-100 elsewhere).
    Only the edit rows run through the model in each step; the irrelevant rows only need
    their (constant) activations at the edited layer.
    """
    pairs = encode_pairs(tok, [r.prompt for r in requests], [r.target_new for r in requests])
    pad = pad_id(tok)
    ids, mask = right_pad([p + a for p, a in pairs], pad)  # (n_edit, seq)
    labels = torch.full_like(ids, -100)
    for r, (p, a) in enumerate(pairs):  # position t predicts token t+1
        labels[r, len(p) - 1:len(p) - 1 + len(a)] = torch.tensor(a)
    # Never a text about an edited subject or one of the request's own locality probes.
    banned = [r.subject for r in requests if r.subject] + [x.prompt for r in requests for x in r.locality]
    texts, seen = [], set()
    for _ in range(20 * hp.irrelevant_samples):  # draws without replacement, no full shuffle of a large pool
        if len(texts) == hp.irrelevant_samples or len(seen) == len(pool):
            break
        i = rng.randrange(len(pool))
        if i not in seen:
            seen.add(i)
            if not any(b in pool[i] for b in banned):
                texts.append(pool[i])
    if hp.contrast_subject:
        texts += [r.prompt.replace(r.subject, scramble(r.subject, rng)) for r in requests
                  for _ in range(hp.contrast_subject) if r.subject and r.subject in r.prompt]
    irr = None
    if texts:
        irr = right_pad([t[:hp.max_irrelevant_tokens] for t in tok(texts, add_special_tokens=True)["input_ids"]], pad)
    subj = subject_mask(tok, requests, mask) if getattr(hp, "score_tokens", "all") == "subject" else None
    return (ids, mask, labels), irr, subj


def subject_mask(tok, requests, mask: torch.Tensor) -> torch.Tensor:
    """(rows, seq) 1 at the tokens of each edit row's subject (EasyEdit's `act_mask`).

    A token belongs to the subject if its characters overlap the subject's span in the
    prompt. A row whose request has no subject in its prompt (or a tokenizer without
    offsets) keeps every real token, i.e. falls back to the all-token score.
    """
    out = mask.clone()
    for r, req in enumerate(requests):
        span = req.subject_span() if req.subject else None
        if span is None:
            continue
        try:
            offs = tok(req.prompt, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, TypeError, KeyError, ValueError):
            continue  # a slow tokenizer: no offsets, all tokens
        idx = [i for i, (s, e) in enumerate(offs) if e > s and s < span[1] and e > span[0]]
        if idx and max(idx) < out.shape[1]:
            out[r].zero_()
            out[r, idx] = 1
    return out


@contextlib.contextmanager
def lower_blocks_cached(adapter, layer: int, run):
    """Run `run()` once, then make blocks 0..layer-1 return those outputs until exit."""
    blocks = [adapter.layer(i) for i in range(layer)]
    seen: dict[int, object] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    for i, b in enumerate(blocks):
        b.forward = lambda *a, _o=seen[i], **k: _o  # the block's input never changes in this edit
    try:
        yield
    finally:
        for b in blocks:
            del b.forward  # back to the class's forward


def margin_loss(edit_s: torch.Tensor, irr_s: torch.Tensor, hp) -> torch.Tensor:
    """WISE routing loss from (n_e,) edit scores and (n_i,) irrelevant scores.

    The margins are the paper's α, β, γ times `margin_scale` (scores are in the units of
    the MLP output, which differ from model to model).
    """
    alpha, beta, gamma = (hp.margin_scale * m for m in (hp.alpha, hp.beta, hp.gamma))
    def hinge_mean(x):  # mean over the violated entries only
        pos = x[x > 0]
        return pos.mean() if pos.numel() else x.new_zeros(())
    loss = hinge_mean(beta - edit_s)
    if irr_s.numel():
        loss = loss + hinge_mean(irr_s - alpha)
        loss = loss + hinge_mean(gamma - (edit_s[:, None] - irr_s[None, :]))  # (n_e, n_i)
    return loss


def _activations(model, adapter, layer: int, ids, mask) -> torch.Tensor:
    """(rows, seq, d_ff) inputs of the edited MLP-out projection, main memory only."""
    acts: list[torch.Tensor] = []
    with adapter.hook_mlp_neurons(layer, lambda a: acts.append(a.detach())), torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return acts[0]


def _scores(a: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows,) activation scores of side memory `delta` (out, in) on acts `a` (rows, seq, in)."""
    return row_mean((a @ delta.T).float().norm(dim=-1), mask.float())  # (rows, seq, out) -> (rows,)


class Packed:
    """The real (unpadded) positions of a right-padded batch of activations, packed.

    Scoring a packed batch skips the padding's matmuls: irrelevant texts vary in length, so a
    padded batch spends up to half of each step's score matmul on padding.

    Example:
        >>> p = Packed(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]))
        >>> p.tokens.shape, p.scores(torch.eye(4)).tolist()
        (torch.Size([3, 4]), [2.0, 2.0])
    """

    def __init__(self, a: torch.Tensor, mask: torch.Tensor):
        keep = mask.bool()  # (rows, seq)
        self.tokens = a[keep]  # (n_tok, d_ff)
        self.row = torch.arange(a.shape[0], device=a.device)[:, None].expand_as(keep)[keep]  # (n_tok,)
        self.count = keep.sum(1).clamp_min(1).float()  # (rows,)

    def cat(self, other: "Packed") -> "Packed":
        """The rows of `self` followed by those of `other`."""
        out = Packed.__new__(Packed)
        out.tokens = torch.cat([self.tokens, other.tokens])
        out.row = torch.cat([self.row, other.row + self.count.shape[0]])
        out.count = torch.cat([self.count, other.count])
        return out

    def scores(self, delta: torch.Tensor, route: str = "mean") -> torch.Tensor:
        """(rows,) mean (route="max": max) of ||delta a|| over each row's real positions (= `_scores`)."""
        norms = (self.tokens @ delta.T).float().norm(dim=-1)  # (n_tok, out) -> (n_tok,)
        if route == "max":  # norms >= 0, so a start of 0 is neutral
            return norms.new_zeros(self.count.shape).scatter_reduce(0, self.row, norms, "amax")
        return norms.new_zeros(self.count.shape).index_add(0, self.row, norms) / self.count


def train_shard(model, adapter, mem: WISEMemory, batch, hp, seed: int) -> dict:
    """Train the live shard on one batch in place on `mem`; returns statistics."""
    (ids, mask, labels), irr, subj = batch
    dev = mem.delta.device
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    n_done = int(mem.counts[1])
    shard = n_done // hp.shard_size
    if n_done % hp.shard_size == 0:  # a new shard: a fresh random subspace
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(mem.counts[0]))
        mem.mask.copy_(torch.rand(mem.mask.shape, generator=g) < hp.mask_ratio)
    a_irr = None
    if irr is not None:  # irrelevant rows never need the layers above: only their activations
        irr_mask = irr[1].to(dev)
        a_irr = Packed(_activations(model, adapter, mem.layer, irr[0].to(dev), irr_mask), irr_mask)
    acts = _activations(model, adapter, mem.layer, ids, mask)
    a_edit = Packed(acts, mask)  # all tokens: the router's score (and its threshold)
    a_act = a_edit  # the tokens whose score the margin loss pushes above β
    if subj is not None:  # score_tokens="subject" (EasyEdit's act_mask / deact_mask)
        subj = subj.to(dev)
        a_act = Packed(acts, subj)
        rest = mask * (1 - subj)  # the edit rows' own non-subject tokens count as irrelevant
        keep = rest.sum(1) > 0  # (n_edit,) rows with a subject found (others fell back to all tokens)
        if bool(keep.any()):
            a_rest = Packed(acts[keep], rest[keep])
            a_irr = a_rest if a_irr is None else a_irr.cat(a_rest)
    w = (mem.group_base + mem.taus[shard]).clone().requires_grad_(True)  # (out, in)
    grad_mask = mem.mask.to(w.dtype)
    forward = lambda: model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # noqa: E731
    losses, steps = [], 0
    mem.train_delta = w  # every position reads the side memory while training
    try:
        with lower_blocks_cached(adapter, mem.layer, forward):
            opt = torch.optim.SGD([w], lr=hp.lr)
            for steps in range(1, hp.steps + 1):
                opt.zero_grad(set_to_none=True)
                logits = forward().float()  # (n_edit, seq, vocab)
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels)
                edit_s = a_act.scores(w)  # (n_e,)
                irr_s = a_irr.scores(w) if a_irr is not None else edit_s[:0]  # (n_i,)
                act = margin_loss(edit_s, irr_s, hp)
                losses.append((ce.item(), act.item()))
                if ce.item() < hp.early_stop_loss and act.item() == 0.0:
                    break
                (ce + act).backward()
                w.grad *= grad_mask  # knowledge sharding: only this shard's subspace moves
                opt.step()
                if hp.norm_constraint:
                    with torch.no_grad():
                        w.clamp_(-hp.norm_constraint, hp.norm_constraint)  # stay near the main memory
    finally:
        mem.train_delta = None
    with torch.no_grad():
        mem.taus[shard].copy_(w.detach() - mem.group_base)
        _merge(mem, shard + 1, hp.ties_density)
        edit_min = float(a_edit.scores(mem.delta, mem.route).min())  # the router's own score
        irr_max = float(a_irr.scores(mem.delta).max()) if a_irr is not None else 0.0
        mem.min_score.copy_(torch.minimum(mem.min_score, torch.tensor([edit_min], device=dev)))
        mem.counts += 1
        if int(mem.counts[1]) == hp.shard_size * mem.taus.shape[0]:
            _close_group(mem)
    return {"steps": steps, "ce_first": losses[0][0], "ce_last": losses[-1][0], "act_last": losses[-1][1],
            "edit_score": edit_min, "irrelevant_score_max": irr_max}


def _merge(mem: WISEMemory, n_shards: int, density: float) -> None:
    """delta = group_base + TIES(shard task vectors) (peft's trim / elect sign / disjoint mean)."""
    taus = [mem.taus[k] for k in range(n_shards)]
    if n_shards == 1 and density >= 1.0:
        merged = taus[0]  # TIES of one vector at full density is that vector
    else:
        with warnings.catch_warnings():  # peft warns that density 1 prunes nothing: intended
            warnings.simplefilter("ignore")
            merged = ties(taus, torch.ones(n_shards, device=mem.delta.device), density)
    mem.delta.copy_(mem.group_base + merged)


def _close_group(mem: WISEMemory) -> None:
    """A merge group is full: keep its merged memory and start the next group."""
    if mem.retrieve:  # archive the memory; the next group starts a fresh one from the main memory
        mem.register_buffer("memories", torch.cat([mem.memories, mem.delta[None].clone()]))
        mem.register_buffer("thresholds", torch.cat([mem.thresholds, mem.threshold()]))
        mem.delta.zero_()
        mem.min_score.fill_(float("inf"))
    mem.group_base.copy_(mem.delta)
    mem.taus.zero_()
    mem.counts[1] = 0
