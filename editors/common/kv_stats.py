"""Key statistics of the locate-then-edit editors: C = E[k kᵀ] of an MLP out-projection's keys.

ROME's u = C⁻¹k* and MEMIT's (λC + KᵀK)⁻¹ need the second moment of the keys (the inputs of
the MLP output projection) over a generic corpus (`editors.common.corpus`; the papers use
Wikipedia). One corpus pass collects every missing layer; the result is CACHED ON DISK through
`workbench.core.cache` (kind "kv", one file per layer), keyed by the hash of exactly the weights
that produce those keys, the layer, the corpus tokens and the sample count — so a second edit
with an unchanged model below the layer reads the file instead of recomputing.

Example:
    >>> C = second_moments(model, tok, adapter, [0, 1])[1]   # (d_ff, d_ff)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json

import torch

from workbench.core import offload
from workbench.core.cache import cache_key, load_tensors, store_tensors
from editors.common.corpus import load_corpus
from editors.common.kv import _device, _pad_batch
from workbench.eval.scoring import pad_id
from workbench.core.patch import _tensor_digest

CACHE_KIND = "kv"
cache_misses = 0  # second-moment corpus passes done by this process (tests read it)


def key_weights_hash(adapter, layer: int, exclude: tuple[str, ...] = ()) -> str:
    """sha256 of the weights that produce layer `layer`'s keys, less the names in `exclude`.

    The embeddings, every block below, and block `layer` itself except its MLP output
    projection (the keys are that projection's *input*). So ROME's own edits, which only
    touch that projection, leave the hash — and the cached statistics — valid. MEMIT
    excludes the projections it edits itself: its C is meant to be the statistics of the
    keys *before* its edits (the paper computes it once, on the unedited model), and its
    updates are built to leave generic keys' values nearly unchanged.
    """
    skip = {adapter.param_name(adapter.mlp_out(layer)), *exclude}
    h = hashlib.sha256()
    parts = [("embed", adapter.embeddings())] + [(f"block{j}", adapter.layer(j)) for j in range(layer + 1)]
    for prefix, module in parts:
        for name, t in sorted(module.state_dict().items()):
            full = adapter.param_name(module, name)
            if full not in skip:
                h.update(_tensor_digest(full, offload.read(adapter.model, full, t)))  # offloaded: real values
    return h.hexdigest()


def _corpus_ids(tok, texts: list[str], n_samples: int, max_length: int) -> list[list[int]]:
    enc = tok(texts[:n_samples], add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    return [ids for ids in enc if len(ids) > 0]


def second_moments(model, tok, adapter, layers, *, corpus: str | None = None, n_samples: int = 2000,
                   max_length: int = 128, batch_size: int = 64,
                   exclude: tuple[str, ...] = ()) -> dict[int, torch.Tensor]:
    """{layer: C}, C = E[k kᵀ] (d_ff, d_ff) float32 over every token of the first `n_samples`
    corpus texts, read from the cache or computed (all missing layers in one corpus pass).
    `corpus`: a corpus file, None for `editors.common.corpus.default_corpus()`.
    `exclude`: parameter names left out of the cache key (see `key_weights_hash`).

    Uncentred, as ROME's `layer_stats(..., to_collect=["mom2"])`: the update's constraint is
    on W k for the keys themselves, not on their deviations from a mean.
    """
    seqs = _corpus_ids(tok, load_corpus(corpus), n_samples, max_length)
    tokens_hash = hashlib.sha256(json.dumps(seqs).encode()).hexdigest()  # text, tokenizer and truncation
    out, keys = {}, {}
    for layer in sorted(set(layers)):
        keys[layer] = cache_key(stat="mom2", weights=key_weights_hash(adapter, layer, tuple(exclude)),
                                layer=layer, tokens=tokens_hash, n_texts=len(seqs))
        hit = load_tensors(CACHE_KIND, keys[layer])
        if hit is not None:
            out[layer] = hit["mom2"]
    missing = [layer for layer in keys if layer not in out]
    if missing:
        from workbench.core.cache import cache_dir
        from workbench.core.progress import one_time_cost
        what = f"collecting key statistics of layer{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
        with one_time_cost(what, cache_dir() / CACHE_KIND, len(seqs)) as advance:
            computed = _collect(model, adapter, missing, seqs, pad_id(tok), batch_size, advance)
        for layer, mom2 in computed.items():
            store_tensors(CACHE_KIND, keys[layer], {"mom2": mom2},
                          meta={"stat": "mom2", "layer": layer, "n_texts": len(seqs), "corpus": corpus or "default"})
            out[layer] = mom2
    return out


@torch.no_grad()
def _collect(model, adapter, layers, seqs, pad: int, batch_size: int, advance=None) -> dict[int, torch.Tensor]:
    global cache_misses
    cache_misses += 1
    device = _device(model)
    sums = {layer: None for layer in layers}
    count = 0
    mask_now: list[torch.Tensor] = []

    def grab(layer):
        def fn(acts):  # (b, seq, d_ff)
            keep = mask_now[0].bool()
            k = acts[keep].double()  # (tokens, d_ff): padding excluded
            s = k.T @ k  # (d_ff, d_ff)
            sums[layer] = s if sums[layer] is None else sums[layer] + s
        return fn

    handles = [adapter.hook_mlp_neurons(layer, grab(layer)) for layer in layers]
    try:
        for s in range(0, len(seqs), batch_size):
            ids, mask = _pad_batch(seqs[s:s + batch_size], pad, device)
            mask_now[:] = [mask]
            model(input_ids=ids, attention_mask=mask)
            count += int(mask.sum())
            if advance is not None:
                advance(len(ids))
    finally:
        for h in handles:
            h.remove()
    return {layer: (sums[layer] / count).float().cpu() for layer in layers}
