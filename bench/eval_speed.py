"""Evaluation overhead: wall time of `evaluate_edits` on N requests of the shipped model,
divided by the time of bare batched forward passes over exactly the same token sequences
(the floor: no evaluator can score them with fewer forward passes). Target: <= 1.5.

    python bench/eval_speed.py [--n 1000] [--batch-size 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from workbench.eval import evaluate as ev
from workbench.core.model import load_model
from workbench.eval.requests import load_requests
from workbench.eval.scoring import length_sorted_batches, encode_pairs, right_pad

REPO = Path(__file__).resolve().parent.parent


def floor_seconds(model, tok, requests, batch_size: int) -> tuple[float, int]:
    items = ev._edit_items(requests)
    pairs = encode_pairs(tok, [p for _, _, p, _, _ in items], [a for *_, a, _ in items])
    seqs = [p + a for p, a in pairs]
    t0 = time.perf_counter()
    with torch.no_grad():
        for idx in length_sorted_batches(len(seqs), batch_size, [len(s) for s in seqs]):
            ids, mask = right_pad([seqs[i] for i in idx], tok.pad_token_id)
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - t0, sum(len(s) for s in seqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, tok = load_model()
    reqs = load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[: args.n]
    ref = ev.reference(model, tok, reqs, batch_size=args.batch_size)
    ev.evaluate_edits(model, tok, reqs[:50], ref, batch_size=args.batch_size)  # warm-up
    evals, floors = [], []
    for _ in range(args.repeats):  # interleaved, best of each, so background noise hits both alike
        t0 = time.perf_counter()
        ev.evaluate_edits(model, tok, reqs, ref, batch_size=args.batch_size)
        evals.append(time.perf_counter() - t0)
        f, n_tokens = floor_seconds(model, tok, reqs, args.batch_size)
        floors.append(f)
    e, f = min(evals), min(floors)
    print(f"| requests | probes' tokens | evaluate (s) | floor: forward only (s) | ratio |")
    print(f"|---|---|---|---|---|")
    print(f"| {len(reqs)} | {n_tokens} | {e:.2f} | {f:.2f} | {e / f:.2f} |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, best of {args.repeats}")


if __name__ == "__main__":
    main()
