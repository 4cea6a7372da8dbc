"""Device-map check: edits on a model split by accelerate equal edits on the whole model.

    PYTHONPATH=. python bench/device_map_check.py [--model DIR] [--max-memory 6MB] [--editors ft,rome,wise,kfac]

Opens two workspaces on the same checkpoint through the session API: one on the model loaded
whole, one with `device_map="auto"` and a `max_memory` that leaves most decoder layers
offloaded (meta tensors, loaded from the checkpoint by accelerate's hooks at each forward).
For each editor it applies the same request with the same seed to both (`Workbench.edit`,
so the ledger path runs), compares every state_dict entry (max |Δ| split vs whole), rolls
both back to base (`rollback("base")`), compares with the base weights, and prints a row:
the seconds each apply took and the modules the edit loaded. A last line measures, on the
whole model alone, why a matmul with a weight in a fresh buffer may round differently.
Each placement has its own statistics cache, so ROME's key covariance and K-FAC's factors
are collected through each model's own forward passes.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

EDITS = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "edits_counterfactual.jsonl"
FORGETS = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "forget_canaries.jsonl"
RETAIN = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "retain.jsonl"
# Kept small so the check runs in minutes on 2 cores; the defaults give the same comparison.
PARAMS = {"kfac": {"max_tokens": "20480"}}  # K-FAC warns below 20000 collected tokens


def max_abs_diff(a: dict, b: dict) -> float:
    """max |a - b| over every entry (inf when the key sets or shapes differ)."""
    if sorted(a) != sorted(b):
        return float("inf")
    worst = 0.0
    for k in a:
        x, y = a[k].detach().cpu(), b[k].detach().cpu()
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, (x.double() - y.double()).abs().max().item())  # () scalar
    return worst


def compact(names: list[str]) -> str:
    """Module names folded per block: 'model.layers.1-3 (27 modules), lm_head'."""
    layers, other = {}, []
    for n in names:
        m = re.match(r"(.*\.)(\d+)\.", n)
        if m:
            layers.setdefault(m.group(1), set()).add(int(m.group(2)))
        else:
            other.append(n)
    parts = [f"{p}{min(ix)}-{max(ix)}" if len(ix) > 1 else f"{p}{min(ix)}" for p, ix in layers.items()]
    return ", ".join(parts + other) + f" ({len(names)} modules)"


def snapshot(model) -> dict:
    from workbench.core.offload import state_values
    return {k: v.detach().clone() for k, v in state_values(model)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--max-memory", default="6MB", help="cpu memory for the split load")
    ap.add_argument("--editors", default="ft,rome,wise,kfac")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from workbench.core.offload import offloaded_modules
    from workbench.editing.registry import get_editor
    from workbench.eval.requests import load_probes, load_requests, with_retain
    from workbench.editing.session import Workbench
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="device-map-check-"))
    placements = {"whole": {}, "split": dict(device_map="auto", max_memory={"cpu": args.max_memory})}
    wbs = {}
    for name, kw in placements.items():
        t0 = time.perf_counter()
        wbs[name] = Workbench(args.model, root / f"ws-{name}", **kw)
        print(f"opened {name:<5} in {time.perf_counter() - t0:5.2f} s  base hash {wbs[name].base_hash[:12]}")
    whole, split = wbs["whole"], wbs["split"]
    assert whole.base_hash == split.base_hash, "the split load does not hash as the whole one"
    base = snapshot(whole.model)
    print(f"offloaded at load (max_memory cpu={args.max_memory}): {compact(offloaded_modules(split.model))}")
    print(f"device map: {split.model.hf_device_map}\n")
    edit = load_requests(EDITS)[0]
    forget = with_retain(load_requests(FORGETS)[:1], load_probes(RETAIN)[:20])[0]  # prune needs a retain set

    print(f"{'editor':<7} {'max|Δw| edit':>13} {'hash =':>7} {'max|Δw| rollbk':>13} {'= base':>7} "
          f"{'s whole':>8} {'s split':>8}  modules the edit loaded (kept resident)")
    for ed in [e.strip() for e in args.editors.split(",") if e.strip()]:
        request = forget if get_editor(ed).capabilities.forget else edit
        secs, before_off = {}, set(offloaded_modules(split.model))
        for name, wb in wbs.items():
            os.environ["WORKBENCH_CACHE"] = str(root / f"cache-{name}")  # each collects its own statistics
            t0 = time.perf_counter()
            wb.edit(ed, [request], params=PARAMS.get(ed, {}), seed=0)
            secs[name] = time.perf_counter() - t0
        d_edit = max_abs_diff(snapshot(whole.model), snapshot(split.model))
        same_hash = whole.weights_hash() == split.weights_hash() != whole.base_hash
        for wb in wbs.values():
            wb.rollback("base")
        after = snapshot(split.model)
        d_back = max(max_abs_diff(after, base), max_abs_diff(snapshot(whole.model), base))
        back_hash = split.weights_hash() == whole.weights_hash() == whole.base_hash
        loaded = sorted(before_off - set(offloaded_modules(split.model)))
        shown = (", ".join(loaded) if len(loaded) <= 2 else compact(loaded)) if loaded else "-"
        print(f"{ed:<7} {d_edit:13.3g} {str(same_hash):>7} {d_back:13.3g} {str(back_hash):>7} "
              f"{secs['whole']:8.2f} {secs['split']:8.2f}  {shown}", flush=True)
    problems = [s.verify() for s in wbs.values()]
    print(f"\nverify (replay on a fresh copy, split replayed split): "
          f"{'ok' if not any(problems) else problems}; still offloaded: {compact(offloaded_modules(split.model))}")
    print("seconds: Workbench.edit (edit + before/after metrics + ledger commit)")
    print(f"control, whole model only: x @ W.T vs x @ W.clone().T (same values, another buffer) differ by "
          f"{alignment_control(whole):.3g}: CPU BLAS results depend on a buffer's memory alignment, and an "
          f"onloaded weight is a fresh buffer, so a matmul with it (ROME's W k) may round differently")


def alignment_control(wb) -> float:
    """max |x Wᵀ - x W'ᵀ| for W' a copy of W in a fresh buffer (same values, bit for bit)."""
    import torch
    ad = wb.adapter
    w = ad.weight(ad.mlp_out(1)).detach()  # (hidden, d_ff)
    x = torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(0))  # (1, d_ff)
    assert torch.equal(w, w.clone())
    return (x @ w.T - x @ w.clone().T).abs().max().item()  # (1, hidden) each


if __name__ == "__main__":
    main()
