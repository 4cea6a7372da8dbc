"""Measure WISE on the shipped model: T sequential single edits, scored on the final model.

    python -m editors.wise.measure --T 100 [--editor wise-tuned] [--threads 1] [--set steps=40 ...]

Prints reliability / generality / locality (teacher-forced token accuracy, as
`workbench.eval.evaluate`), the median seconds per edit, and the side memory's inference
overhead (eval forward time with the memory attached vs detached, same batches), and
`routed`: the share of edit prompts, rephrasings and locality probes (each with its answer,
as scored) whose activation score sends them to the side memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def run(T: int, params: dict, threads: int = 1, editor_name: str = "wise", model_dir=None,
        requests: str = "data/benchmarks/edits_counterfactual.jsonl", seed: int = 0) -> dict:
    from workbench.core.arch import get_adapter
    from workbench.editing.contract import EditContext
    from workbench.eval.evaluate import evaluate_edits, reference
    from workbench.core.model import load_model
    from workbench.eval.requests import load_requests

    from workbench.editing.registry import get_editor

    from .memory import ATTR

    torch.set_num_threads(threads)
    model, tok = load_model(model_dir)
    adapter = get_adapter(model)
    reqs = load_requests(requests)[:T]
    ref = reference(model, tok, reqs)
    times = []
    for r in reqs:
        cls = get_editor(editor_name)
        editor = cls(cls.hparams_class.from_strings(params).derive(adapter))  # a fresh editor per edit
        t0 = time.perf_counter()
        editor.edit(EditContext(model, tok, adapter, seed=seed), [r])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    mean = evaluate_edits(model, tok, reqs, ref)["mean"]
    t_with = time.perf_counter() - t0
    first = evaluate_edits(model, tok, reqs[:1], ref)["mean"] if T else {}
    mem = getattr(model, ATTR)
    routed = routed_share(model, tok, mem, reqs)
    handles, mem._handles = mem._handles, []
    for h in handles:  # time the same evaluation through the main memory only
        h.remove()
    t0 = time.perf_counter()
    evaluate_edits(model, tok, reqs, ref)
    t_without = time.perf_counter() - t0
    return {"T": T, "params": params, "reliability": mean["reliability"], "generality": mean["generality"],
            "locality": mean["locality"], "first_edit_reliability": first.get("reliability"),
            "median_s_per_edit": statistics.median(times), "mean_s_per_edit": statistics.mean(times),
            "inference_overhead_pct": 100 * (t_with - t_without) / t_without,
            "threshold": float(mem.threshold()), "archived_memories": int(mem.memories.shape[0]),
            "routed": routed}


def routed_share(model, tok, mem, reqs) -> dict:
    """Share of each probe kind (with its answer, as scored) that the router sends to a side memory."""
    from workbench.eval.scoring import encode_pairs, pad_id, right_pad
    kinds = {"edit": [(r.prompt, r.target_new) for r in reqs],
             "generality": [(q, r.target_new) for r in reqs for q in r.rephrase_prompts],
             "locality": [(x.prompt, x.answer) for r in reqs for x in r.locality]}
    out = {}
    dev = next(model.parameters()).device
    with torch.no_grad():
        for kind, items in kinds.items():
            if not items:
                continue
            pairs = encode_pairs(tok, [p for p, _ in items], [a for _, a in items])
            mem.record = []
            try:
                for i in range(0, len(pairs), 64):
                    ids, mask = right_pad([p + a for p, a in pairs[i:i + 64]], pad_id(tok))  # (rows, seq)
                    model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
                used = torch.cat(mem.record) if mem.record else torch.zeros(len(pairs), dtype=torch.bool)
            finally:
                mem.record = None
            out[kind] = float(used.float().mean())
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--editor", default="wise", help="wise (the paper's) or wise-tuned (ours)")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--requests", default="data/benchmarks/edits_counterfactual.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="every edit's seed (its random mask)")
    ap.add_argument("--set", nargs="*", default=[], help="hyperparameters as k=v")
    args = ap.parse_args(argv)
    params = dict(kv.split("=", 1) for kv in args.set)
    print(json.dumps(run(args.T, params, args.threads, args.editor, args.model, args.requests, args.seed), indent=2))


if __name__ == "__main__":
    main()
