"""Shared key/value math of the locate-then-edit editors (ROME, MEMIT): one implementation.

An MLP output projection W (out = hidden, in = d_ff) is read as a linear associative memory:
its *keys* k are its inputs (the neuron activations) and its *values* W k are what it writes
into the residual stream. ROME (Meng et al. 2022) and MEMIT (Meng et al. 2023) need three
things:

- `subject_keys`: the key at the subject's last token, for the request prompt placed after
  a few context prefixes (`CONTEXT_TEMPLATES`) so the key is not tied to one exact string;
- `second_moments` (in `editors.common.kv_stats`): C = E[k kᵀ] over the tokens of a generic
  corpus (the papers use Wikipedia; here `editors.common.corpus.default_corpus()`), the
  statistics of the keys the edit must not disturb, cached on disk (`workbench.core.cache`);
- `compute_z`: the target value v* (ROME: at the MLP output; MEMIT: "z", on the residual
  stream after a block), found by optimising a delta added at the subject's last token so
  that the target is predicted, with a KL term on "{subject} is a" essence prompts, a weight
  decay on the delta and a norm clamp, exactly as `rome/compute_v.py` / `memit/compute_z.py`.

Differences from the papers' code (on purpose, documented):
- context prefixes are a fixed neutral set instead of texts sampled from the model at edit
  time: edits are then a deterministic function of (model, request, hparams);
- C is keyed by the weights that produce the keys, so it is the statistics of the current
  model's keys; the papers compute it once for the unedited model. For ROME the two are the
  same (ROME never changes a weight below its keys). MEMIT leaves the projections it edits
  itself out of the key, so a sequence of MEMIT edits keeps the statistics of the keys
  before them, as in the paper; any other change below a layer (an `ft` edit, say) means
  recomputing that layer's C (all missing layers in one corpus pass).

Example:
    >>> C = kv_stats.second_moments(model, tok, adapter, [1])[1]               # doctest: +SKIP
    >>> k = subject_keys(model, tok, adapter, 1, [req]).mean(1)   # (1, d_ff)  # doctest: +SKIP
    >>> z = compute_z(model, tok, adapter, req, layer=1, site="mlp_out").target  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from editors.common.frozen import logits_only_at, lower_blocks_cached
from editors.common.corpus import default_corpus  # noqa: F401 (re-exported: WISE's irrelevant pool reads kv.default_corpus)
from workbench.core.errors import InputError
from workbench.eval.scoring import pad_id

# "{}" is the bare prompt; the others put a short neutral sentence first. ROME samples ten
# 5- and 10-token continuations of the model here, MEMIT five 10-token ones; a fixed set
# keeps an edit reproducible and needs no generation at edit time.
CONTEXT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "It was mentioned in the news. {}",
    "Here is what we know. {}",
    "The report was short. {}",
    "People often ask about this. {}",
)
KL_TEMPLATES: tuple[str, ...] = ("{} is a",)  # ROME/MEMIT's essence prompt, about the subject alone
SITES = ("mlp_out", "block")

# ---------------------------------------------------------------------------- tokens

def check_subject(req) -> tuple[int, int]:
    """The subject's character span in the prompt, or the request's own InputError naming 'subject'."""
    if not req.subject:
        raise req.input_error("ROME/MEMIT need the subject (its last token is where the fact is read)",
                              field="subject")
    span = req.subject_span()
    if span is None:
        raise req.input_error(f"subject {req.subject!r} does not occur in the prompt {req.prompt!r}",
                              field="subject")
    return span


def encode_at_subject(tok, template: str, prompt: str, span: tuple[int, int]) -> tuple[list[int], int]:
    """Token ids of `template.format(prompt)` (with BOS) and the index of the subject's last token.

    The subject's last token is the last one whose characters start before the subject ends.

    Example:
        >>> encode_at_subject(tok, "{}", "Ada lives in", (0, 3))  # doctest: +SKIP
        ([1, 67, 100, 97, ...], 3)
    """
    prefix = template[:template.index("{}")]
    text = template.format(prompt)
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    end = len(prefix) + span[1]
    idx = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end]
    if not idx:
        raise InputError(f"no token of the subject found in {text!r}", field="subject")
    return list(enc["input_ids"]), idx[-1]


def _pad_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    from workbench.eval.scoring import right_pad
    ids, mask = right_pad(seqs, pad_id)  # (b, seq) each; right padding keeps positions as alone
    return ids.to(device), mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------- keys

@torch.no_grad()
def subject_keys(model, tok, adapter, layer: int, requests, templates=CONTEXT_TEMPLATES) -> torch.Tensor:
    """(n_requests, n_templates, d_ff) float32 keys at each request's subject-last token.

    Example:
        >>> subject_keys(model, tok, adapter, 1, [req]).shape   # doctest: +SKIP
        torch.Size([1, 5, 768])
    """
    rows, where = [], []
    for req in requests:
        span = check_subject(req)
        for t in templates:
            ids, i = encode_at_subject(tok, t, req.prompt, span)
            rows.append(ids)
            where.append(i)
    ids, mask = _pad_batch(rows, pad_id(tok), _device(model))
    got = []
    with adapter.hook_mlp_neurons(layer, lambda a: got.append(a.detach())):
        model(input_ids=ids, attention_mask=mask)
    acts = got[0].float()  # (b, seq, d_ff)
    keys = acts[torch.arange(len(rows)), torch.tensor(where)]  # (b, d_ff)
    return keys.view(len(requests), len(templates), -1)


def mlp_value(adapter, layer: int, keys: torch.Tensor) -> torch.Tensor:
    """(n, hidden) what the MLP out-projection writes for (n, d_ff) keys: W k (+ bias)."""
    module = adapter.mlp_out(layer)
    w = adapter.weight(module).detach().float()  # (hidden, d_ff)
    out = keys @ w.T  # (n, hidden)
    bias = getattr(module, "bias", None)
    return out + bias.detach().float() if bias is not None else out


# ---------------------------------------------------------------------------- target values (v*, z)

@dataclass
class ZResult:
    """The optimised value: `target` = `init` + delta, both (hidden,) float32, and the losses."""
    target: torch.Tensor
    init: torch.Tensor
    steps: int
    loss_first: float
    loss_last: float


def _site_module(adapter, layer: int, site: str):
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    return adapter.mlp_out(layer) if site == "mlp_out" else adapter.layer(layer)


class _AddAt:
    """Forward hook adding `delta` at (row r, position where[r]) of a module's output.

    `site="mlp_out"` hooks the MLP out-projection (ROME's v lives at the MLP output);
    `site="block"` hooks the whole block (MEMIT's z lives on the residual stream after it).
    Also records the unmodified output there, (rows, hidden), in `self.seen`.
    """

    def __init__(self, module, shape: tuple[int, int], where: list[int], delta: torch.Tensor | None):
        self.shape, self.where, self.delta, self.seen = shape, where, delta, None
        self.handle = module.register_forward_hook(self)

    def __call__(self, _mod, _args, output):
        is_tuple = isinstance(output, tuple)
        h = output[0] if is_tuple else output
        flat = h.dim() == 2  # OPT runs its MLP on (batch*seq, hidden) rows
        h3 = h.view(*self.shape, h.shape[-1]) if flat else h  # (b, seq, hidden)
        rows = torch.arange(len(self.where), device=h.device)
        cols = torch.tensor(self.where, device=h.device)
        self.seen = h3[rows, cols].detach().float()  # (rows, hidden)
        if self.delta is None:
            return None
        add = torch.zeros_like(h3)
        add[rows, cols] = self.delta.to(h3.dtype)  # the same delta at every prompt's subject token
        new = (h3 + add).view_as(h)
        return (new,) + tuple(output[1:]) if is_tuple else new

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def values_at_subject(model, tok, adapter, layer: int, site: str, requests) -> torch.Tensor:
    """(n, hidden) the output at `site` of `layer` at each bare prompt's subject-last token."""
    rows, where = [], []
    for req in requests:
        ids, i = encode_at_subject(tok, "{}", req.prompt, check_subject(req))
        rows.append(ids)
        where.append(i)
    ids, mask = _pad_batch(rows, pad_id(tok), _device(model))
    hook = _AddAt(_site_module(adapter, layer, site), tuple(ids.shape), where, None)
    try:
        model(input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    return hook.seen


def compute_z(model, tok, adapter, req, *, layer: int, site: str, templates=CONTEXT_TEMPLATES,
              steps: int = 20, lr: float = 0.5, weight_decay: float = 0.5, kl_factor: float = 0.0625,
              clamp_norm_factor: float = 4.0, early_stop: float = 5e-2) -> ZResult:
    """The value that makes the model say `req.target_new`: ROME's v*, MEMIT's z.

    A delta (hidden,) is added to the output of `site` at layer `layer` at the subject's last
    token of every prompt, and optimised with Adam to minimise
        mean NLL of the target after each context-prefixed prompt
        + kl_factor * KL(p_edited || p_orig) at the subject token of "{subject} is a"
        + weight_decay * |delta| / |init|²,
    with |delta| clamped to clamp_norm_factor * |init| after every step (rome/compute_v.py,
    memit/compute_z.py). Only the delta is trained; the model's weights get no gradient.

    Example:
        >>> z = compute_z(model, tok, adapter, req, layer=1, site="block", clamp_norm_factor=0.75)  # doctest: +SKIP
        >>> z.target.shape                                                                          # doctest: +SKIP
        torch.Size([256])
    """
    span = check_subject(req)  # the span; the request itself was checked by Editor.check
    target = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]  # as the evaluator scores it
    rows, where, labels = [], [], []
    for t in templates:  # rewriting prompts: prefix + prompt + target[:-1]
        ids, i = encode_at_subject(tok, t, req.prompt, span)
        rows.append(ids + target[:-1])
        where.append(i)
        labels.append([(len(ids) - 1 + j, tid) for j, tid in enumerate(target)])  # (position, token)
    for t in KL_TEMPLATES:  # essence prompts: the subject's meaning should stay the same
        at = t.index("{}")
        ids, i = encode_at_subject(tok, "{}", t.format(req.subject), (at, at + len(req.subject)))
        rows.append(ids)
        where.append(i)
    device = _device(model)
    ids, mask = _pad_batch(rows, pad_id(tok), device)
    n_rw = len(templates)
    pos = torch.tensor([p for lab in labels for p, _ in lab], device=device)
    row = torch.tensor([r for r, lab in enumerate(labels) for _ in lab], device=device)
    tgt = torch.tensor([t for lab in labels for _, t in lab], device=device)
    kl_rows = torch.arange(n_rw, len(rows), device=device)
    kl_pos = torch.tensor(where[n_rw:], device=device)

    # Logits only at the positions the loss reads (targets, KL tokens): `logits_to_keep` takes one
    # index list for all rows, so the union, and each position's index in it.
    keep = torch.unique(torch.cat([pos, kl_pos]))  # (k,) sorted
    kw = logits_only_at(model, keep)
    at = torch.searchsorted(keep, pos) if kw else pos
    kl_at = torch.searchsorted(keep, kl_pos) if kw else kl_pos
    hidden = adapter.hidden_size
    delta = torch.zeros(hidden, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    hook = _AddAt(_site_module(adapter, layer, site), tuple(ids.shape), where, delta)
    init = kl_init = None
    losses = []
    forward = lambda: model(input_ids=ids, attention_mask=mask, **kw).logits  # noqa: E731
    try:
        # blocks below `layer` see no delta: they run once
        with lower_blocks_cached(adapter, layer, forward):
            for _ in range(steps):
                with torch.enable_grad():
                    logits = forward().float()  # (b, k, vocab)
                    if init is None:
                        init = hook.seen[0].clone()  # value at the bare prompt's subject token, delta = 0
                    logp = torch.log_softmax(logits, -1)
                    nll = -logp[row, at, tgt].sum() / (n_rw * len(target))  # mean over prompts and target tokens
                    kl_logp = logp[kl_rows, kl_at]  # (n_kl, vocab)
                    if kl_init is None:
                        kl_init = kl_logp.detach().clone()
                    kl = torch.nn.functional.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
                    decay = delta.norm() / init.norm() ** 2
                    loss = nll + kl_factor * kl + weight_decay * decay
                    losses.append(loss.item())
                    if loss.item() < early_stop:
                        break
                    (grad,) = torch.autograd.grad(loss, [delta])  # no .grad left on the model's weights
                delta.grad = grad
                opt.step()
                with torch.no_grad():  # keep the new value within a ball around the old one
                    max_norm = clamp_norm_factor * init.norm()
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
    finally:
        hook.remove()
    return ZResult(target=(init + delta.detach()).float(), init=init, steps=len(losses),
                   loss_first=losses[0], loss_last=losses[-1])


@torch.no_grad()
def mlp_adds_to_residual(model, tok, adapter, layer: int, req) -> bool:
    """True when layer `layer`'s MLP output is added unchanged to the residual stream.

    MEMIT's spreading assumes residual += W k. It holds for pre-norm blocks (Llama, GPT-2,
    and the parallel blocks of GPT-NeoX and Phi) but not where the MLP output is normalised
    before the addition (Gemma 2/3's post-feed-forward norm) or the block output is (post-
    norm OPT). Probed, not looked up: a small vector is added at the MLP output and the
    change of the block's output compared with it.
    """
    ids, i = encode_at_subject(tok, "{}", req.prompt, check_subject(req))
    return mlp_adds_to_residual_at(model, adapter, layer, ids, i, pad_id(tok))


@torch.no_grad()
def mlp_adds_to_residual_at(model, adapter, layer: int, ids: list[int], i: int, pad: int = 0) -> bool:
    """`mlp_adds_to_residual` probed at position `i` of the token ids `ids`."""
    ids_t, mask = _pad_batch([ids], pad, _device(model))
    block = _AddAt(adapter.layer(layer), tuple(ids_t.shape), [i], None)
    try:
        model(input_ids=ids_t, attention_mask=mask)
        plain = block.seen[0]
        gen = torch.Generator().manual_seed(0)
        e = torch.randn(adapter.hidden_size, generator=gen).to(plain.device)
        e = e * (1e-2 * max(float(plain.norm()), 1e-3) / float(e.norm()))  # (hidden,) small probe
        add = _AddAt(adapter.mlp_out(layer), tuple(ids_t.shape), [i], e)
        try:
            model(input_ids=ids_t, attention_mask=mask)
        finally:
            add.remove()
        moved = block.seen[0] - plain  # (hidden,)
    finally:
        block.remove()
    return bool((moved - e).norm() <= 1e-2 * e.norm())
