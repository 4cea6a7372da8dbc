"""K-FAC factor collection time against a plain forward + backward pass over the same tokens.

    python bench/kfac_collect_speed.py [--tokens 30000] [--threads 1] [--model DIR]

The plain pass is one training-style step per batch: forward, summed cross-entropy on the
real next tokens, backward into every parameter. The collection is `editors.kfac.collect_factors`
for every layer (true Fisher: labels sampled from the model), i.e. the same forward and
backward plus the A/G accumulations in the hooks. Issue 6's target: ratio <= 1.5.
Each is run twice and the faster run kept (the first warms the allocator).
"""
from __future__ import annotations

import argparse
import time


def plain_pass(model, blocks, batch_size: int) -> None:
    import torch
    for s in range(0, len(blocks), batch_size):
        x = blocks[s:s + batch_size]  # (batch, block)
        logits = model(input_ids=x).logits[:, :-1].float()  # (batch, block-1, vocab)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                 reduction="sum")
        loss.backward()
        model.zero_grad(set_to_none=True)


def best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=30_000, help="corpus tokens (default 30,000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    args = ap.parse_args()
    import torch

    from editors.kfac import KFACHParams, collect_factors, corpus_blocks, default_corpus
    from workbench.core.arch import get_adapter
    from workbench.core.model import load_model
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    adapter = get_adapter(model)
    hp = KFACHParams()
    blocks = corpus_blocks(tok, default_corpus(), hp.block_size, args.tokens)
    layers = tuple(range(adapter.num_layers))
    plain = best_of(lambda: plain_pass(model, blocks, hp.batch_size))
    kfac = best_of(lambda: collect_factors(model, adapter, blocks, layers, fisher=hp.fisher,
                                           batch_size=hp.batch_size, seed=0))
    print(f"{blocks.numel()} tokens, {len(layers)} layers, batch {hp.batch_size} x {hp.block_size}, "
          f"{args.threads} thread(s)")
    print(f"plain forward+backward: {plain:.2f} s; K-FAC collection: {kfac:.2f} s; ratio {kfac / plain:.2f}")


if __name__ == "__main__":
    main()
