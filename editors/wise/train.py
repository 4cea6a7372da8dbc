"""One WISE edit: train the live shard of the side memory, update the router, save and merge shards.

Per step (the paper's objective): cross-entropy on the target tokens, read through the side
memory, plus the routing margin loss on the activation scores Δ (see `memory.py`):

    max(0, Δ_irr − α) + max(0, β − Δ_edit) + max(0, γ − (Δ_edit − Δ_irr))

Δ_edit is the score of each edit row (with `score_tokens="subject"` only its subject's tokens, and
its other tokens join the irrelevant rows, as EasyEdit's act_mask / deact_mask), Δ_irr of each
irrelevant row. Hinges are averaged over the pairs/positions that violate them (as EasyEdit does),
so satisfied margins cost nothing. Gradients are masked to the shard's random subspace (ratio ρ),
SGD's weight decay acts on the whole side weight W + Δ (EasyEdit's optimiser holds the full
`new_weight`), and Δ is clamped to ±`norm_constraint` after each step.

Edit rows (EasyEdit's `tokenize`): the prompt + target, and the same under each of the memory's
generated context prefixes ("I am ...", "Because the ...": greedy continuations of five short
starts, made once by the first edit from the unedited model). Irrelevant rows: texts of the
workbench's generic corpus (`editors.common.kv.default_corpus`: the bundled world's fact
sentences about other people and filler; or the lines of `irrelevant_file`; `DEFAULT_IRRELEVANT`
below without either), never one naming the edited subject or quoting one of the request's
locality probes — EasyEdit's one `loc_prompt` per edit, drawn from a disjoint training set — and,
optionally (`contrast_subject`, ours), the edit prompt with its subject's letters scrambled.

Stop (`stop="loss"`, EasyEdit's `EarlyStopMeter`): when the previous two steps' total losses are
both ≤ `early_stop_loss` apart by ≤ 1e-4. `stop="margins"` (ours): cross-entropy below
`early_stop_loss` and every margin met. The edit's score for the threshold is the mean over its
edit rows in the last forward pass (EasyEdit's `save_editing_activation`), or with
`threshold_from="final"` (ours) through the trained memory.

Why lower blocks are cached: nothing below the edited layer changes during an edit, so the
blocks below it run once; in each step they return their cached outputs (their `forward`
is swapped for the duration of the edit) and only the edited layer and those above run.
The activations entering the MLP-out projection and its main output are also constant, so Δ's
scores are computed from cached (tokens, d_ff) and (tokens, out) tensors.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path

import torch

from editors.common.frozen import logits_only_at, lower_blocks_cached, swapped_forward
from workbench.editing.contract import trainable_only
from workbench.eval.scoring import encode_pairs, pad_id, right_pad

from .memory import WISEMemory, ties_merge

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


PREFIX_STARTS = ("I", "You", "Because", "Yes", "Q: ")  # EasyEdit's get_context_templates
PREFIX_LENGTHS = (5, 10)  # new tokens: five prefixes of each length


def generate_prefixes(model, tok, n: int) -> tuple[str, ...]:
    """`n` (<= 10) context prefixes: greedy continuations of EasyEdit's five starts, 5 then 10 new
    tokens, generated by `model` as it is (the first WISE edit calls this before its memory exists)."""
    out: list[str] = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for length in PREFIX_LENGTHS:
            for start in PREFIX_STARTS:
                if len(out) == n:
                    return tuple(out)
                ids = torch.tensor([tok(start)["input_ids"]], device=dev)
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=length,
                                     do_sample=False, pad_token_id=pad_id(tok))
                out.append(tok.decode(gen[0], skip_special_tokens=True).replace("{", "(").replace("}", ")"))
    return tuple(out)


def edit_rows(requests, prefixes) -> list[tuple[str, str, object]]:
    """(prompt, target, request) per edit row: each request bare, then under each prefix."""
    return [(r.prompt if not pre else f"{pre} {r.prompt}", r.target_new, r) for r in requests
            for pre in ("",) + tuple(prefixes)]


def irrelevant_texts(requests, hp, rng: random.Random, pool: list[str]) -> list[str]:
    """`irrelevant_samples` texts per request drawn from `pool` (never one naming an edited subject or
    quoting a request's locality probe), then `contrast_subject` subject-scrambled prompts each."""
    # Never a text about an edited subject or one of the request's own locality probes.
    banned = [r.subject for r in requests if r.subject] + [x.prompt for r in requests for x in r.locality]
    want = hp.irrelevant_samples * len(requests)
    texts, seen = [], set()
    for _ in range(20 * want):  # draws without replacement, no full shuffle of a large pool
        if len(texts) == want or len(seen) == len(pool):
            break
        i = rng.randrange(len(pool))
        if i not in seen:
            seen.add(i)
            if not any(b in pool[i] for b in banned):
                texts.append(pool[i])
    if hp.contrast_subject:
        texts += [r.prompt.replace(r.subject, scramble(r.subject, rng)) for r in requests
                  for _ in range(hp.contrast_subject) if r.subject and r.subject in r.prompt]
    return texts


def build_batch(tok, requests, hp, rng: random.Random, pool: list[str], prefixes=()):
    """The edit rows and the irrelevant rows, each right-padded on its own.

    Returns ((ids, mask, labels) of the edit rows, (ids, mask) of the irrelevant rows or None,
    the edit rows' subject mask or None); labels (rows, seq) hold the target token position t must
    predict (-100 elsewhere). Only the edit rows run through the model in each step; the
    irrelevant rows only need their (constant) activations at the edited layer.
    """
    rows = edit_rows(requests, prefixes)
    pairs = encode_pairs(tok, [p for p, _, _ in rows], [t for _, t, _ in rows])
    pad = pad_id(tok)
    ids, mask = right_pad([p + a for p, a in pairs], pad)  # (n_rows, seq)
    labels = torch.full_like(ids, -100)
    for r, (p, a) in enumerate(pairs):  # position t predicts token t+1
        labels[r, len(p) - 1:len(p) - 1 + len(a)] = torch.tensor(a)
    texts = irrelevant_texts(requests, hp, rng, pool)
    irr = None
    if texts:
        irr = right_pad([t[:hp.max_irrelevant_tokens] for t in tok(texts, add_special_tokens=True)["input_ids"]], pad)
    subj = subject_mask(tok, rows, mask) if hp.score_tokens == "subject" else None
    return (ids, mask, labels), irr, subj


def subject_mask(tok, rows, mask: torch.Tensor) -> torch.Tensor:
    """(rows, seq) 1 at the tokens of each edit row's subject (EasyEdit's `act_mask`).

    `rows` are `edit_rows` triples (prompt, target, request). A token belongs to the subject if
    its characters overlap the subject's span in the row's prompt. A row whose request has no
    subject in its prompt (or a tokenizer without offsets) keeps every real token, i.e. falls
    back to the all-token score.
    """
    out = mask.clone()
    for r, (prompt, _, req) in enumerate(rows):
        span = req.subject_span() if req.subject else None
        if span is None:
            continue
        shift = len(prompt) - len(req.prompt)  # a context prefix and its space come first
        try:
            offs = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, TypeError, KeyError, ValueError):
            continue  # a slow tokenizer: no offsets, all tokens
        idx = [i for i, (s, e) in enumerate(offs) if e > s and s < span[1] + shift and e > span[0] + shift]
        if idx and max(idx) < out.shape[1]:
            out[r].zero_()
            out[r, idx] = 1
    return out


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def edited_block_linear(adapter, mem: WISEMemory, acts: torch.Tensor, w: torch.Tensor, run):
    """Make the edited block return its output at w's starting value plus Δ's change times the
    (constant) activations, `O₀ + a (w − w₀)ᵀ`, instead of running attention and MLP again each
    step — if the block adds its MLP's output to the residual stream unchanged (a pre-norm block),
    which is checked here with a test direction (a block that normalises the MLP's output runs
    in full). `run()` runs the model once per call; `acts` (rows, seq, d_ff); w (out, in)."""
    block = adapter.layer(mem.layer)
    got: list = []
    hook = block.register_forward_hook(lambda m, a, out: got.append(out))
    w0 = w.detach().clone()
    try:
        with torch.no_grad():
            run()
            test = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)).to(w) * 1e-2  # (out, in)
            mem.train_delta = w0 + test
            run()
    finally:
        hook.remove()
        mem.train_delta = w
    base, tested = _hidden(got[0]).detach(), _hidden(got[1])  # (rows, seq, hidden)
    step = (acts @ test.T).reshape(base.shape)
    if not torch.allclose(base + step, tested, rtol=1e-4, atol=1e-5 * float(base.abs().max()) + 1e-6):
        yield  # not linear in Δ here: every step runs the block
        return
    rest = got[0][1:] if isinstance(got[0], tuple) else None

    def forward(*_a, **_k):
        h = base + (acts @ (w - w0).T).reshape(base.shape)  # (rows, seq, hidden)
        return (h, *rest) if rest is not None else h
    with swapped_forward([block], [forward]):
        yield


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


class Packed:
    """The real (unpadded) positions of a right-padded batch of activations, packed, with the
    projection's main output at each (constant during an edit).

    Scoring a packed batch skips the padding's matmuls: irrelevant texts vary in length, so a
    padded batch spends up to half of each step's score matmul on padding.

    Example:
        >>> mem = WISEMemory(0, 4, 4, score="linear")
        >>> p = Packed(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.zeros(4, 4), None)
        >>> p.tokens.shape, p.scores(mem, torch.eye(4)).tolist()
        (torch.Size([3, 4]), [2.0, 2.0])
    """

    def __init__(self, a: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        keep = mask.bool()  # (rows, seq)
        self.tokens = a[keep]  # (n_tok, d_ff)
        self.base = torch.nn.functional.linear(self.tokens, weight, bias)  # (n_tok, out): W a + b
        self.row = torch.arange(a.shape[0], device=a.device)[:, None].expand_as(keep)[keep]  # (n_tok,)
        self.count = keep.sum(1).clamp_min(1).float()  # (rows,)

    def cat(self, other: "Packed") -> "Packed":
        """The rows of `self` followed by those of `other`."""
        out = Packed.__new__(Packed)
        out.tokens = torch.cat([self.tokens, other.tokens])
        out.base = torch.cat([self.base, other.base])
        out.row = torch.cat([self.row, other.row + self.count.shape[0]])
        out.count = torch.cat([self.count, other.count])
        return out

    def scores(self, mem: WISEMemory, delta: torch.Tensor, route: str = "mean") -> torch.Tensor:
        """(rows,) mean over each row's real positions of the memory's token score for side memory
        `delta` (out, in) — the mean, as in training (EasyEdit's `euc` without `infer`) — or their
        max (route="max")."""
        norms = mem.token_scores(self.base, self.tokens @ delta.T)  # (n_tok,)
        if route == "max":  # norms >= 0, so a start of 0 is neutral
            return norms.new_zeros(self.count.shape).scatter_reduce(0, self.row, norms, "amax")
        return norms.new_zeros(self.count.shape).index_add(0, self.row, norms) / self.count


def _stop(hp, losses: list[tuple[float, float]]) -> bool:
    """Whether to stop before this step, from the (ce, margin) losses of the steps so far."""
    if hp.stop == "margins":
        ce, act = losses[-1]
        return ce < hp.early_stop_loss and act == 0.0
    if len(losses) < 3:  # EasyEdit's meter compares the two steps before this one
        return False
    prev, last = sum(losses[-3]), sum(losses[-2])
    return abs(last - prev) <= 1e-4 and last <= hp.early_stop_loss


def train_edit(model, adapter, mem: WISEMemory, batch, hp, seed: int, n_edits: int) -> dict:
    """Train the live shard on one batch of `n_edits` requests in place on `mem`, then save and
    merge shards when due; returns statistics."""
    (ids, mask, labels), irr, subj = batch
    dev = mem.delta.device
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    total = int(mem.counts[0])
    if int(mem.counts[1]) == 0 or (hp.mask_every and total % hp.mask_every == 0):  # a fresh random subspace
        g = torch.Generator().manual_seed(seed * 1_000_003 + total)
        mem.mask.copy_(torch.rand(mem.mask.shape, generator=g) < hp.mask_ratio)
    proj = adapter.mlp_out(mem.layer)
    weight, bias = adapter.weight(proj).detach(), getattr(proj, "bias", None)  # (out, in), (out,) | None
    a_irr = None
    if irr is not None:  # irrelevant rows never need the layers above: only their activations
        irr_mask = irr[1].to(dev)
        a_irr = Packed(_activations(model, adapter, mem.layer, irr[0].to(dev), irr_mask), irr_mask, weight, bias)
    acts = _activations(model, adapter, mem.layer, ids, mask)
    a_act = Packed(acts, mask, weight, bias)  # the tokens whose score the margin loss pushes above β
    a_edit = a_act  # all tokens: the score the threshold is built from (the router's)
    if subj is not None:  # score_tokens="subject" (EasyEdit's act_mask / deact_mask)
        subj = subj.to(dev)
        a_act = Packed(acts, subj, weight, bias)
        rest = mask * (1 - subj)  # the edit rows' own non-subject tokens count as irrelevant
        keep = rest.sum(1) > 0  # (rows,) rows with a subject found (others fell back to all tokens)
        if bool(keep.any()):
            a_rest = Packed(acts[keep], rest[keep], weight, bias)
            a_irr = a_rest if a_irr is None else a_irr.cat(a_rest)
    w = mem.delta.clone().requires_grad_(True)  # (out, in): the live shard goes on learning
    grad_mask = mem.mask.to(w.dtype)
    # Logits only where some row has a target token (the loss reads nothing else): the positions'
    # union, as `logits_to_keep` takes one index list for every row.
    keep = (labels != -100).any(0).nonzero().flatten()  # (k,)
    kw = logits_only_at(model, keep)
    labels = labels[:, keep] if kw else labels  # (rows, k)
    forward = lambda: model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits  # noqa: E731
    losses: list[tuple[float, float]] = []
    steps, edit_score = 0, 0.0
    mem.train_delta = w  # every position reads the side memory while training
    try:
        # No model weight needs a gradient: only w's (backward then skips every weight's grad).
        with trainable_only(model), lower_blocks_cached(adapter, mem.layer, forward), \
                edited_block_linear(adapter, mem, acts, w, forward):
            opt = torch.optim.SGD([w], lr=hp.lr)
            for steps in range(1, hp.steps + 1):
                opt.zero_grad(set_to_none=True)
                logits = forward().float()  # (rows, seq, vocab)
                if hp.target_loss == "easyedit":  # a row's sum over its t target tokens / (t + 1), mean over rows
                    per = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (rows, k)
                    ce = (per.sum(1) / ((labels != -100).sum(1) + 1)).mean()
                else:
                    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels)
                edit_s = a_act.scores(mem, w)  # (n_e,)
                irr_s = a_irr.scores(mem, w) if a_irr is not None else edit_s[:0]  # (n_i,)
                act = margin_loss(edit_s, irr_s, hp)
                losses.append((ce.item(), act.item()))
                # the edit's score as the router sees it, from this pass (EasyEdit saves it at the last one)
                edit_score = float(a_edit.scores(mem, w.detach()).mean()) if a_edit is not a_act \
                    else float(edit_s.detach().mean())
                if _stop(hp, losses):
                    break
                (ce + act).backward()
                w.grad *= grad_mask  # knowledge sharding: only this shard's subspace moves
                if hp.weight_decay:  # SGD's decay of the full side weight W + Δ, unmasked (as EasyEdit)
                    w.grad.add_(weight + w.detach(), alpha=hp.weight_decay)
                opt.step()
                if hp.norm_constraint:
                    with torch.no_grad():
                        w.clamp_(-hp.norm_constraint, hp.norm_constraint)  # stay near the main memory
    finally:
        mem.train_delta = None
    with torch.no_grad():
        mem.delta.copy_(w.detach())
        if hp.threshold_from == "final":
            edit_score = float(a_edit.scores(mem, mem.delta).min())
        irr_max = float(a_irr.scores(mem, mem.delta).max()) if a_irr is not None else 0.0
        mem.min_score.copy_(torch.minimum(mem.min_score, torch.tensor([edit_score], device=dev)))
        mem.counts += torch.tensor([n_edits, n_edits], device=mem.counts.device)
        saved = _save_and_merge(mem, total, int(mem.counts[0]))
    return {"steps": steps, "ce_first": losses[0][0], "ce_last": losses[-1][0], "act_last": losses[-1][1],
            "edit_score": edit_score, "irrelevant_score_max": irr_max, **saved}


def _crossed(before: int, after: int, every: int | None) -> bool:
    """Whether a multiple of `every` lies in (before, after] (a batch may step over one)."""
    return bool(every) and after // every > before // every


def _save_and_merge(mem: WISEMemory, before: int, after: int) -> dict:
    """EasyEdit's `save_weight` every `shard_size` edits (the live shard is kept, the next starts
    from W) and `merge_weight` every `merge_every` edits."""
    out = {"saved": False, "merged": False}
    if _crossed(before, after, mem.shard_size):
        mem.register_buffer("memories", torch.cat([mem.memories, mem.delta[None].clone()]))
        if mem.retrieve:  # each archived memory keeps its own threshold; the next one starts afresh
            mem.register_buffer("thresholds", torch.cat([mem.thresholds, mem.min_score.clone()]))
            mem.min_score.fill_(float("inf"))
        mem.delta.zero_()
        mem.counts[1] = 0
        out["saved"] = True
    if _crossed(before, after, mem.merge_every):
        if mem.retrieve:  # the last merge_every/shard_size memories become one, with their weakest threshold
            k = mem.merge_every // mem.shard_size
            shards = [mem.memories[-k + j] for j in range(k)]
            one = ties_merge(shards, [1.0 / k] * k, mem.ties_density)
            mem.register_buffer("memories", torch.cat([mem.memories[:-k], one[None]]))
            mem.register_buffer("thresholds", torch.cat([mem.thresholds[:-k], mem.thresholds[-k:].min()[None]]))
        else:
            mem.merged.copy_(mem.merge([mem.memories[j] for j in range(mem.memories.shape[0])]))
            mem.register_buffer("memories", mem.memories[:0].clone())
        out["merged"] = True
    return out
